package ledger

import (
	"strings"
	"testing"
)

// TestDeviceColumnsAgree: the column list, the upsert's placeholders, the
// arguments deviceArgs returns and the position of updated_at (which the
// writer fills in at commit time) all agree, so that a column added at the
// end of the list cannot shift another's value.
func TestDeviceColumnsAgree(t *testing.T) {
	var cols []string
	for _, c := range strings.Split(deviceColumns, ",") {
		cols = append(cols, strings.TrimSpace(c))
	}
	values := upsertSQL[strings.Index(upsertSQL, "VALUES"):strings.Index(upsertSQL, "ON CONFLICT")]
	args, err := deviceArgs(Device{RegistrationID: "d-1", State: StatePending})
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(values, "?"); n != len(cols) || len(args) != len(cols) {
		t.Fatalf("%d columns, %d placeholders, %d arguments: want them equal", len(cols), n, len(args))
	}
	if cols[updatedAtArg] != "updated_at" {
		t.Errorf("updatedAtArg=%d names column %q, want updated_at", updatedAtArg, cols[updatedAtArg])
	}
	for _, c := range cols[1:] {
		if c != "registration_id" && !strings.Contains(upsertSQL, c+" = excluded."+c) {
			t.Errorf("upsert does not update column %s on conflict", c)
		}
	}
	// Each argument lands in its column: give every field a distinct value
	// and find it at the column's index.
	d := Device{RegistrationID: "d-2", State: StateAssigned, OperationID: "op", AssignedHub: "hub", DeviceID: "dev",
		Substatus: "sub", ErrorMessage: "msg", Hint: "hint", Fingerprint: "fp",
		Record: Record{ETag: "etag", Updated: "upd", Created: "cre"}, ReturnedPayload: `{"p":1}`}
	args, err = deviceArgs(d)
	if err != nil {
		t.Fatal(err)
	}
	for col, want := range map[string]any{"registration_id": "d-2", "operation_id": "op", "assigned_hub": "hub", "device_id": "dev",
		"substatus": "sub", "error_message": "msg", "hint": "hint", "fingerprint": "fp", "dps_etag": "etag",
		"dps_updated": "upd", "dps_created": "cre", "returned_payload": `{"p":1}`} {
		i := -1
		for j, c := range cols {
			if c == col {
				i = j
			}
		}
		if i < 0 {
			t.Errorf("column %s is not in deviceColumns", col)
			continue
		}
		if args[i] != want {
			t.Errorf("column %s: argument %d is %v, want %v", col, i, args[i], want)
		}
	}
}
