// Added to package simulator at build time (go build -overlay): run-time knobs of the simulator
// (lease timeout, download rate limit, cut-after-N-bytes fault, guest shutdown delay), set from
// command-line flags and changeable while running through POST /_sim/faults.

package simulator

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// SimFaults is the JSON body of GET/POST /_sim/faults.
type SimFaults struct {
	LeaseTimeout  float64 `json:"lease_timeout"`  // seconds without HttpNfcLeaseProgress before a lease fails (new leases)
	RateLimit     int64   `json:"rate_limit"`     // NFC download bytes per second per transfer, 0 = unlimited
	CutAfter      int64   `json:"cut_after"`      // drop each NFC download after this many bytes, 0 = never
	CutCount      int64   `json:"cut_count"`      // cut only this many more downloads, then clear cut_after; 0 = all
	ShutdownDelay float64 `json:"shutdown_delay"` // seconds ShutdownGuest takes until the VM is powered off
}

var simFaults = struct {
	sync.Mutex
	SimFaults
}{SimFaults: SimFaults{LeaseTimeout: 300, ShutdownDelay: 1}}

func (f SimFaults) leaseTimeout() time.Duration {
	return time.Duration(f.LeaseTimeout * float64(time.Second))
}

func (f SimFaults) shutdownDelay() time.Duration {
	return time.Duration(f.ShutdownDelay * float64(time.Second))
}

func currentFaults() SimFaults {
	simFaults.Lock()
	defer simFaults.Unlock()
	return simFaults.SimFaults
}

// SetFaults replaces the knobs (used by main for the command-line flags).
func SetFaults(f SimFaults) error {
	if err := f.validate(); err != nil {
		return err
	}
	simFaults.Lock()
	defer simFaults.Unlock()
	simFaults.SimFaults = f
	return nil
}

func (f SimFaults) validate() error {
	switch {
	case f.LeaseTimeout <= 0:
		return fmt.Errorf("lease_timeout must be > 0 seconds, got %v", f.LeaseTimeout)
	case f.RateLimit < 0:
		return fmt.Errorf("rate_limit must be >= 0 bytes/s, got %d", f.RateLimit)
	case f.CutAfter < 0:
		return fmt.Errorf("cut_after must be >= 0 bytes, got %d", f.CutAfter)
	case f.CutCount < 0:
		return fmt.Errorf("cut_count must be >= 0, got %d", f.CutCount)
	case f.ShutdownDelay < 0:
		return fmt.Errorf("shutdown_delay must be >= 0 seconds, got %v", f.ShutdownDelay)
	}
	return nil
}

// takeDownloadFaults returns the faults for one new download and counts it against cut_count.
func takeDownloadFaults() SimFaults {
	simFaults.Lock()
	defer simFaults.Unlock()
	f := simFaults.SimFaults
	if f.CutAfter > 0 && f.CutCount > 0 {
		simFaults.CutCount--
		if simFaults.CutCount == 0 {
			simFaults.CutAfter = 0
		}
	}
	return f
}

// ServeFaults handles /_sim/faults: GET returns the knobs, POST merges the given JSON keys.
func ServeFaults(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
	case http.MethodPost, http.MethodPut:
		simFaults.Lock()
		next := simFaults.SimFaults
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		err := dec.Decode(&next)
		if err == nil {
			err = next.validate()
		}
		if err == nil {
			simFaults.SimFaults = next
		}
		simFaults.Unlock()
		if err != nil {
			http.Error(w, "invalid faults: "+err.Error(), http.StatusBadRequest)
			return
		}
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(currentFaults())
}
