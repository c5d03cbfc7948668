package batch

import (
	"context"
	"fmt"
	"time"

	"github.com/dps-batch/dps-batch/dpsservice"
)

// GroupClient is what EnrollGroup needs of a DPS service client.
type GroupClient interface {
	BulkGroups(ctx context.Context, mode dpsservice.BulkMode, groups []dpsservice.EnrollmentGroup) (*dpsservice.BulkResult, error)
	GetGroup(ctx context.Context, id string) (*dpsservice.EnrollmentGroup, error)
	CreateOrUpdateGroup(ctx context.Context, g *dpsservice.EnrollmentGroup, ifMatch string) (*dpsservice.EnrollmentGroup, error)
}

var _ GroupClient = (*dpsservice.Client)(nil)

// GroupOutcome is what EnrollGroup did.
type GroupOutcome string

// The group outcomes.
const (
	GroupCreated         GroupOutcome = "created"
	GroupExistsSame      GroupOutcome = "exists-same"      // it existed with the same attestation; left as it was
	GroupExistsDifferent GroupOutcome = "exists-different" // it exists with another attestation; not changed
	GroupUpdated         GroupOutcome = "updated"
)

// GroupOptions configure EnrollGroup. Zero values take defaults.
type GroupOptions struct {
	// Update replaces an existing group (by its etag, so a change made
	// meanwhile is not overwritten) instead of leaving it.
	Update        bool
	MaxAttempts   int // failed requests before giving up; 0 = DefaultMaxAttempts
	MaxRetryAfter time.Duration
	Backoff       Backoff
}

// GroupResult is EnrollGroup's answer: the outcome, the group as the
// service holds it when it was read (nil if never read), and why it differs.
type GroupResult struct {
	Outcome GroupOutcome
	Stored  *dpsservice.EnrollmentGroup
	Why     string
}

// EnrollGroup creates an enrollment group without ever replacing one by
// accident: a bulk create of one group (DPS answers 409 for an existing
// id), and on 409, or when the answer was lost, a read that compares the
// stored attestation. With Update, an existing group is replaced by etag.
// Retryable failures are retried with back-off.
func EnrollGroup(ctx context.Context, c GroupClient, g dpsservice.EnrollmentGroup, o GroupOptions) (*GroupResult, error) {
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.MaxRetryAfter <= 0 {
		o.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if o.Backoff.MaxRetryAfter <= 0 {
		o.Backoff.MaxRetryAfter = o.MaxRetryAfter
	}
	conflict := false // a create was answered 409: an existing group is not ours
	read := false     // the next step is a read
	for attempt := 1; ; attempt++ {
		var err error
		if read || o.Update {
			var got *dpsservice.EnrollmentGroup
			got, err = c.GetGroup(ctx, g.EnrollmentGroupID)
			switch {
			case err == nil:
				cmp, why := dpsservice.CompareAttestation(g.Attestation, got.Attestation)
				if o.Update {
					stored, uerr := c.CreateOrUpdateGroup(ctx, &g, got.ETag)
					if uerr == nil {
						return &GroupResult{Outcome: GroupUpdated, Stored: stored}, nil
					}
					err = uerr
					break
				}
				switch {
				case cmp == dpsservice.Same && conflict:
					return &GroupResult{Outcome: GroupExistsSame, Stored: got}, nil
				case cmp == dpsservice.Same:
					return &GroupResult{Outcome: GroupCreated, Stored: got}, nil
				}
				return &GroupResult{Outcome: GroupExistsDifferent, Stored: got, Why: why}, nil
			case dpsNotFound(err):
				read, o.Update, err = false, false, nil
				continue // none: create it
			}
		} else {
			var res *dpsservice.BulkResult
			res, err = c.BulkGroups(ctx, dpsservice.BulkCreate, []dpsservice.EnrollmentGroup{g})
			if err == nil {
				if len(res.Errors) == 0 {
					return &GroupResult{Outcome: GroupCreated}, nil
				}
				be := res.Errors[0]
				if be.HTTPStatus() == 409 {
					conflict, read = true, true
					continue
				}
				err = &dpsservice.Error{Op: "bulk create enrollment groups", ID: g.EnrollmentGroupID, HTTPStatus: be.HTTPStatus(), Code: be.ErrorCode, Message: be.ErrorStatus, RequestID: res.RequestID}
				if itemEvent(be) != EnEvNotTaken {
					return nil, err
				}
			} else if dpsservice.MayHaveTakenEffect(err) {
				read = true // the create may have taken effect: read before sending again
			}
		}
		if dpsservice.Classify(err) != dpsservice.Retryable || attempt >= o.MaxAttempts || ctx.Err() != nil {
			return nil, err
		}
		if err := sleep(ctx, o.Backoff.Delay(attempt, CapRetryAfter(dpsservice.RetryAfter(err), o.MaxRetryAfter))); err != nil {
			return nil, fmt.Errorf("enrollment group %s: %w", g.EnrollmentGroupID, err)
		}
	}
}
