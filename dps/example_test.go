package dps_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dps-batch/dps-batch/dps"
)

// Example shows one device's register-then-poll sequence. Retrying failed
// transactions and pacing are the caller's job; Classify and RetryAfter say
// whether and when.
func Example() {
	c, err := dps.NewClient(dps.Config{IDScope: "0ne00000000"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	groupKey := []byte("the enrollment group's decoded primary key")
	d := dps.NewSymmetricKeyDevice("dev-001", dps.DeriveDeviceKeyBytes(groupKey, "dev-001"))
	defer d.Close()

	ctx := context.Background()
	r, err := c.Register(ctx, d, nil)
	for err == nil && !r.Operation.Status.Final() {
		time.Sleep(max(r.RetryAfter, 2*time.Second))
		r, err = c.OperationStatus(ctx, d, r.Operation.OperationID)
	}
	var de *dps.Error
	switch {
	case errors.As(err, &de):
		fmt.Println(dps.Classify(err), err, dps.Hint(err))
	case r.Operation.Status == dps.StatusAssigned:
		fmt.Println("assigned to", r.Operation.RegistrationState.AssignedHub)
	case r.Operation.RegistrationState != nil:
		st := r.Operation.RegistrationState
		fmt.Println(st.Status, st.ErrorCode, st.ErrorMessage, dps.HintForStatus(st.Status, st.ErrorCode))
	}
}
