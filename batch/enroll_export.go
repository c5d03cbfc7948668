package batch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dps-batch/dps-batch/dpsservice"
)

// QueryClient is what an export needs of a DPS service client.
type QueryClient interface {
	QueryEnrollments(ctx context.Context, query string, pageSize int, continuation string) (*dpsservice.Page[dpsservice.IndividualEnrollment], error)
}

var _ QueryClient = (*dpsservice.Client)(nil)

// ExportOptions configure ExportEnrollments. Zero values take defaults.
type ExportOptions struct {
	PageSize      int     // enrollments per page; 0 = 100
	Rate          float64 // pages per minute; 0 = DefaultServiceRate, <0 = unlimited
	MaxAttempts   int     // failed requests per page before giving up; 0 = DefaultMaxAttempts
	MaxRetryAfter time.Duration
	Backoff       Backoff
}

// ExportStats is what an export read.
type ExportStats struct {
	Enrollments int
	Pages       int
	Retries     int
	Throttled   int
}

// ExportEnrollments reads every individual enrollment, a page at a time
// (x-ms-max-item-count, x-ms-continuation), paced and with retries, and
// calls fn for each in the order the service returns them. It stops at fn's
// first error or a page that fails for good.
func ExportEnrollments(ctx context.Context, c QueryClient, o ExportOptions, fn func(dpsservice.IndividualEnrollment) error) (ExportStats, error) {
	if o.PageSize <= 0 {
		o.PageSize = 100
	}
	if o.Rate == 0 {
		o.Rate = DefaultServiceRate
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.MaxRetryAfter <= 0 {
		o.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if o.Backoff.MaxRetryAfter <= 0 {
		o.Backoff.MaxRetryAfter = o.MaxRetryAfter
	}
	pacer := NewPacer(o.Rate)
	var st ExportStats
	cont := ""
	for {
		var page *dpsservice.Page[dpsservice.IndividualEnrollment]
		for attempt := 1; ; attempt++ {
			if err := pacer.Wait(ctx); err != nil {
				return st, err
			}
			p, err := c.QueryEnrollments(ctx, "*", o.PageSize, cont)
			if err == nil {
				pacer.Succeeded()
				page = p
				break
			}
			if s := dpsservice.Status(err); s == 429 || s == 503 && dpsservice.RetryAfter(err) > 0 {
				st.Throttled++
				pacer.Throttled(CapRetryAfter(dpsservice.RetryAfter(err), o.MaxRetryAfter))
			}
			if dpsservice.Classify(err) != dpsservice.Retryable || attempt >= o.MaxAttempts || ctx.Err() != nil {
				return st, fmt.Errorf("page %d: %w", st.Pages+1, err)
			}
			st.Retries++
			if err := sleep(ctx, o.Backoff.Delay(attempt, CapRetryAfter(dpsservice.RetryAfter(err), o.MaxRetryAfter))); err != nil {
				return st, err
			}
		}
		st.Pages++
		// A failed page is read again with the same continuation token, so
		// no record is passed on twice.
		for _, e := range page.Items {
			st.Enrollments++
			if err := fn(e); err != nil {
				return st, err
			}
		}
		if page.Continuation == "" {
			return st, nil
		}
		if page.Continuation == cont {
			return st, errors.New("the service answered the same continuation token twice: stopping rather than looping")
		}
		cont = page.Continuation
	}
}
