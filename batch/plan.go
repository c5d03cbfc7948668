package batch

import (
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

// Action is what a run does with one device, decided from its ledger row.
type Action int

// The actions, in the order a summary lists them.
const (
	// ActionSkip: nothing to do (assigned, disabled, or failed without --retry-failed).
	ActionSkip Action = iota
	// ActionRegister: send a (billable) register PUT, then poll.
	ActionRegister
	// ActionPoll: DPS already gave an operation id; poll it. No PUT.
	ActionPoll
	// ActionLookup: a PUT may have been sent but its answer was never recorded
	// (the process died); ask DPS with the non-billable status lookup first and
	// register only if DPS has nothing for the device.
	ActionLookup
	// ActionChanged: the device is assigned but its manifest credentials have
	// changed since; it is reported, not re-registered (use --reprovision).
	ActionChanged
)

func (a Action) String() string {
	switch a {
	case ActionSkip:
		return "skip"
	case ActionRegister:
		return "register"
	case ActionPoll:
		return "poll"
	case ActionLookup:
		return "lookup"
	case ActionChanged:
		return "changed"
	}
	return "unknown"
}

// Policy holds the user's choices that change what a re-run does.
type Policy struct {
	RetryFailed bool // re-register devices whose last outcome was a permanent failure or disabled
	// Reissue re-registers (billable) issued-lost devices: assigned, but
	// the certificate DPS issued them was not kept.
	Reissue     bool
	Reprovision bool // re-register assigned devices on purpose (billable)
	// ReprovisionBefore limits Reprovision to devices that reached their
	// final state before this time. Zero means every assigned device.
	ReprovisionBefore time.Time
	// NewCampaign starts a new campaign even though one is open (the open
	// one is abandoned); without it, an open campaign of the same kind is
	// continued.
	NewCampaign bool
	// Campaign is the ledger campaign this run registers devices in (set by
	// Run); 0 = none yet. A device already registered in it
	// (Device.CampaignID) is not registered again by it.
	Campaign int64
}

// campaignKind names the campaign a policy runs, "" for none.
func (p Policy) campaignKind() string {
	var kinds []string
	if p.Reprovision {
		kinds = append(kinds, "reprovision")
	}
	if p.RetryFailed {
		kinds = append(kinds, "retry-failed")
	}
	if p.Reissue {
		kinds = append(kinds, "reissue")
	}
	return strings.Join(kinds, "+")
}

// inCampaign reports whether d was already registered in p's campaign.
func (p Policy) inCampaign(d ledger.Device) bool {
	return p.Campaign != 0 && d.CampaignID == p.Campaign
}

// Decide returns what to do with a device given its ledger row (found=false
// when the ledger has never seen it) and the fingerprint of the credentials
// the manifest now gives for it.
func Decide(d ledger.Device, found bool, fingerprint string, p Policy) Action {
	if !found {
		return ActionRegister
	}
	switch d.State {
	case ledger.StatePending, ledger.StateRetryable, "":
		return ActionRegister
	case ledger.StateRegistering:
		return ActionLookup
	case ledger.StateAssigning:
		if d.OperationID == "" {
			return ActionLookup
		}
		return ActionPoll
	case ledger.StateAssigned:
		if p.Reprovision && !p.inCampaign(d) && (p.ReprovisionBefore.IsZero() || d.FinishedAt.Before(p.ReprovisionBefore)) {
			return ActionRegister
		}
		if d.Fingerprint != "" && fingerprint != "" && d.Fingerprint != fingerprint {
			return ActionChanged
		}
		return ActionSkip
	case ledger.StateIssuedLost:
		if (p.Reissue || p.Reprovision) && !p.inCampaign(d) {
			return ActionRegister
		}
		return ActionSkip
	case ledger.StateFailed, ledger.StateDisabled:
		if p.RetryFailed && !p.inCampaign(d) {
			return ActionRegister
		}
		return ActionSkip
	}
	return ActionLookup
}

// Plan counts what a run would do; a dry run prints it.
type Plan struct {
	Devices  int            // rows in the manifest
	ByAction map[Action]int // devices per action
	New      int            // devices the ledger has not seen yet
}

// Billable is the number of register PUTs the run would send if nothing
// fails: one per device to register. Lookups first may avoid some.
func (p *Plan) Billable() int { return p.ByAction[ActionRegister] }

// Work is the number of devices the run would touch at all.
func (p *Plan) Work() int {
	return p.ByAction[ActionRegister] + p.ByAction[ActionPoll] + p.ByAction[ActionLookup]
}
