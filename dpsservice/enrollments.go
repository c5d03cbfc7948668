package dpsservice

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// Page is one page of a query's answer. Continuation is "" on the last page;
// pass it to the next call to read the next page.
type Page[T any] struct {
	Items        []T
	Continuation string
}

// GetEnrollment reads one individual enrollment: GET /enrollments/{id}. A
// missing enrollment is an *Error with HTTPStatus 404 (IsNotFound). The
// service does not send X.509 certificates back, only their Info.
func (c *Client) GetEnrollment(ctx context.Context, id string) (*IndividualEnrollment, error) {
	const op = "get enrollment"
	if err := checkID(op, id); err != nil {
		return nil, err
	}
	var out IndividualEnrollment
	if _, err := c.do(ctx, call{op: op, id: id, method: http.MethodGet, path: "/enrollments/" + url.PathEscape(id), out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// PutEnrollment creates or replaces one individual enrollment: PUT
// /enrollments/{id}. With ifMatch set (an etag, or "*"), the service
// replaces only a record with that etag (412 otherwise). Without it, an
// existing record is replaced: to create without ever replacing, use
// BulkEnrollments with BulkCreate.
func (c *Client) PutEnrollment(ctx context.Context, e *IndividualEnrollment, ifMatch string) (*IndividualEnrollment, error) {
	const op = "put enrollment"
	if e == nil {
		return nil, &Error{Op: op, Err: fmt.Errorf("%w: nil enrollment", ErrInvalidRequest)}
	}
	if err := checkID(op, e.RegistrationID); err != nil {
		return nil, err
	}
	var out IndividualEnrollment
	_, err := c.do(ctx, call{op: op, id: e.RegistrationID, method: http.MethodPut,
		path: "/enrollments/" + url.PathEscape(e.RegistrationID), body: e, ifMatch: ifMatch, out: &out})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteEnrollment deletes one individual enrollment: DELETE
// /enrollments/{id}, with If-Match when ifMatch is set. A missing
// enrollment is a 404 *Error.
func (c *Client) DeleteEnrollment(ctx context.Context, id, ifMatch string) error {
	const op = "delete enrollment"
	if err := checkID(op, id); err != nil {
		return err
	}
	_, err := c.do(ctx, call{op: op, id: id, method: http.MethodDelete, path: "/enrollments/" + url.PathEscape(id), ifMatch: ifMatch})
	return err
}

// BulkEnrollments runs one bulk operation on up to MaxBulkItems individual
// enrollments: POST /enrollments with {"mode", "enrollments"}. The answer
// (HTTP 200) lists an error for each item that failed; the others
// succeeded. An *Error means the whole call failed.
func (c *Client) BulkEnrollments(ctx context.Context, mode BulkMode, items []IndividualEnrollment) (*BulkResult, error) {
	op := "bulk " + string(mode) + " enrollments"
	if err := checkBulk(op, mode, len(items)); err != nil {
		return nil, err
	}
	for i := range items {
		if err := checkID(op, items[i].RegistrationID); err != nil {
			return nil, err
		}
	}
	var out BulkResult
	r, err := c.do(ctx, call{op: op, method: http.MethodPost, path: "/enrollments",
		body: BulkEnrollmentOperation{Enrollments: items, Mode: mode}, out: &out})
	if err != nil {
		return nil, err
	}
	out.RequestID = r.requestID
	cleanBulk(&out)
	return &out, nil
}

// QueryEnrollments reads one page of individual enrollments: POST
// /enrollments/query with {"query": query} ("" means "*"), at most
// pageSize items (0: the service's default), from continuation ("" for
// the first page).
func (c *Client) QueryEnrollments(ctx context.Context, query string, pageSize int, continuation string) (*Page[IndividualEnrollment], error) {
	var items []IndividualEnrollment
	next, err := c.runQuery(ctx, "query enrollments", "/enrollments/query", query, pageSize, continuation, &items)
	if err != nil {
		return nil, err
	}
	return &Page[IndividualEnrollment]{Items: items, Continuation: next}, nil
}

// GetGroup reads one enrollment group: GET /enrollmentGroups/{id}.
func (c *Client) GetGroup(ctx context.Context, id string) (*EnrollmentGroup, error) {
	const op = "get enrollment group"
	if err := checkID(op, id); err != nil {
		return nil, err
	}
	var out EnrollmentGroup
	if _, err := c.do(ctx, call{op: op, id: id, method: http.MethodGet, path: "/enrollmentGroups/" + url.PathEscape(id), out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateOrUpdateGroup creates or replaces an enrollment group: PUT
// /enrollmentGroups/{id}, with If-Match when ifMatch is set. To create
// without ever replacing, use BulkGroups with BulkCreate.
func (c *Client) CreateOrUpdateGroup(ctx context.Context, g *EnrollmentGroup, ifMatch string) (*EnrollmentGroup, error) {
	const op = "put enrollment group"
	if g == nil {
		return nil, &Error{Op: op, Err: fmt.Errorf("%w: nil enrollment group", ErrInvalidRequest)}
	}
	if err := checkID(op, g.EnrollmentGroupID); err != nil {
		return nil, err
	}
	var out EnrollmentGroup
	_, err := c.do(ctx, call{op: op, id: g.EnrollmentGroupID, method: http.MethodPut,
		path: "/enrollmentGroups/" + url.PathEscape(g.EnrollmentGroupID), body: g, ifMatch: ifMatch, out: &out})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteGroup deletes an enrollment group: DELETE /enrollmentGroups/{id}.
func (c *Client) DeleteGroup(ctx context.Context, id, ifMatch string) error {
	const op = "delete enrollment group"
	if err := checkID(op, id); err != nil {
		return err
	}
	_, err := c.do(ctx, call{op: op, id: id, method: http.MethodDelete, path: "/enrollmentGroups/" + url.PathEscape(id), ifMatch: ifMatch})
	return err
}

// BulkGroups runs one bulk operation on up to MaxBulkItems enrollment
// groups: POST /enrollmentGroups with {"mode", "enrollmentGroups"}.
func (c *Client) BulkGroups(ctx context.Context, mode BulkMode, groups []EnrollmentGroup) (*BulkResult, error) {
	op := "bulk " + string(mode) + " enrollment groups"
	if err := checkBulk(op, mode, len(groups)); err != nil {
		return nil, err
	}
	for i := range groups {
		if err := checkID(op, groups[i].EnrollmentGroupID); err != nil {
			return nil, err
		}
	}
	var out BulkResult
	r, err := c.do(ctx, call{op: op, method: http.MethodPost, path: "/enrollmentGroups",
		body: BulkEnrollmentGroupOperation{EnrollmentGroups: groups, Mode: mode}, out: &out})
	if err != nil {
		return nil, err
	}
	out.RequestID = r.requestID
	cleanBulk(&out)
	return &out, nil
}

// QueryGroups reads one page of enrollment groups: POST
// /enrollmentGroups/query.
func (c *Client) QueryGroups(ctx context.Context, query string, pageSize int, continuation string) (*Page[EnrollmentGroup], error) {
	var items []EnrollmentGroup
	next, err := c.runQuery(ctx, "query enrollment groups", "/enrollmentGroups/query", query, pageSize, continuation, &items)
	if err != nil {
		return nil, err
	}
	return &Page[EnrollmentGroup]{Items: items, Continuation: next}, nil
}

// GetRegistrationState reads a device's registration state: GET
// /registrations/{id}. A device that never registered is a 404 *Error.
func (c *Client) GetRegistrationState(ctx context.Context, id string) (*DeviceRegistrationState, error) {
	const op = "get registration state"
	if err := checkID(op, id); err != nil {
		return nil, err
	}
	var out DeviceRegistrationState
	if _, err := c.do(ctx, call{op: op, id: id, method: http.MethodGet, path: "/registrations/" + url.PathEscape(id), out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteRegistrationState deletes a device's registration state: DELETE
// /registrations/{id}, with If-Match when ifMatch is set. A device with no
// registration state is a 404 *Error.
func (c *Client) DeleteRegistrationState(ctx context.Context, id, ifMatch string) error {
	const op = "delete registration state"
	if err := checkID(op, id); err != nil {
		return err
	}
	_, err := c.do(ctx, call{op: op, id: id, method: http.MethodDelete, path: "/registrations/" + url.PathEscape(id), ifMatch: ifMatch})
	return err
}

// QueryRegistrationStates reads one page of the registration states of an
// enrollment group's devices: POST /registrations/{groupId}/query.
func (c *Client) QueryRegistrationStates(ctx context.Context, groupID string, pageSize int, continuation string) (*Page[DeviceRegistrationState], error) {
	const op = "query registration states"
	if err := checkID(op, groupID); err != nil {
		return nil, err
	}
	var items []DeviceRegistrationState
	r, err := c.do(ctx, call{op: op, id: groupID, method: http.MethodPost, path: "/registrations/" + url.PathEscape(groupID) + "/query",
		header: pageHeaders(pageSize, continuation), out: &items})
	if err != nil {
		return nil, err
	}
	return &Page[DeviceRegistrationState]{Items: items, Continuation: continuationOf(r)}, nil
}

// query runs one page of an enrollment or group query.
func (c *Client) runQuery(ctx context.Context, op, path, query string, pageSize int, continuation string, out any) (string, error) {
	if pageSize < 0 {
		return "", &Error{Op: op, Err: fmt.Errorf("%w: page size %d is negative", ErrInvalidRequest, pageSize)}
	}
	if query == "" {
		query = "*"
	}
	r, err := c.do(ctx, call{op: op, method: http.MethodPost, path: path, body: QuerySpecification{Query: query},
		header: pageHeaders(pageSize, continuation), out: out})
	if err != nil {
		return "", err
	}
	return continuationOf(r), nil
}

func pageHeaders(pageSize int, continuation string) map[string]string {
	h := map[string]string{}
	if pageSize > 0 {
		h[HeaderMaxItemCount] = strconv.Itoa(pageSize)
	}
	if continuation != "" {
		h[HeaderContinuation] = continuation
	}
	return h
}

func continuationOf(r *response) string { return r.header.Get(HeaderContinuation) }

// checkID refuses an empty id.
func checkID(op, id string) error {
	if id == "" {
		return &Error{Op: op, Err: fmt.Errorf("%w: empty id", ErrInvalidRequest)}
	}
	return nil
}

// checkBulk refuses an unknown mode and an empty or oversized batch.
func checkBulk(op string, mode BulkMode, n int) error {
	switch mode {
	case BulkCreate, BulkUpdate, BulkUpdateIfMatchETag, BulkDelete:
	default:
		return &Error{Op: op, Err: fmt.Errorf("%w: unknown bulk mode %q", ErrInvalidRequest, mode)}
	}
	if n < 1 || n > MaxBulkItems {
		return &Error{Op: op, Err: fmt.Errorf("%w: %d items, want 1 to %d", ErrInvalidRequest, n, MaxBulkItems)}
	}
	return nil
}

// cleanBulk makes server text in a bulk answer safe to store and print.
func cleanBulk(r *BulkResult) {
	for i := range r.Errors {
		e := &r.Errors[i]
		e.ErrorStatus = cleanText(e.ErrorStatus, maxMessageLen)
	}
}
