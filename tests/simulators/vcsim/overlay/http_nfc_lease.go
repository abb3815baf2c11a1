// Replaces govmomi 0.24.2's simulator/http_nfc_lease.go at build time (go build -overlay).
// Same exported names (HttpNfcLease, NewHttpNfcLease, ServeNFC, nfcLease, nfcPrefix, files),
// plus what a real ESXi/vCenter lease does and the stock one does not:
//   - the lease times out (state error, Timedout fault) when no HttpNfcLeaseProgress arrives
//     within the lease timeout; Complete/Abort/timeout end it and cut running transfers;
//   - NFC transfers need the vmware_soap_session cookie of the session that opened the lease;
//   - GET streams the file chunked (no Content-Length), with the injectable faults of faults.go.
//
// Based on govmomi's simulator/http_nfc_lease.go, Copyright (c) 2019 VMware, Inc.,
// Apache License 2.0.

package simulator

import (
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"math"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type HttpNfcLease struct {
	mo.HttpNfcLease
	files map[string]string

	st *leaseState
}

// leaseState is kept behind a pointer: registry code takes the managed object by reflection.
type leaseState struct {
	svc          *Service
	session      string // key of the session that opened the lease
	export       bool   // an ExportVm lease (the VM cannot be powered on meanwhile)
	timeout      time.Duration
	lastProgress time.Time
	timer        *time.Timer
	done         chan struct{} // closed when the lease ends (timeout, abort, complete)
	endOnce      sync.Once
}

var (
	nfcLease  sync.Map // lease reference -> *HttpNfcLease, for the HTTP side
	nfcPrefix = "/nfc/"
)

func (l *HttpNfcLease) end() {
	l.st.endOnce.Do(func() {
		if l.st.export {
			exportEnded(l.Info.Entity)
		}
		if l.st.timer != nil {
			l.st.timer.Stop()
		}
		close(l.st.done)
		nfcLease.Delete(l.Self)
	})
}

// expire runs from the lease timer; it re-arms itself when progress came in meanwhile.
func (l *HttpNfcLease) expire() {
	Map.WithLock(l, func() {
		if l.State != types.HttpNfcLeaseStateReady {
			return
		}
		if left := l.st.timeout - time.Since(l.st.lastProgress); left > 0 {
			l.st.timer.Reset(left)
			return
		}
		msg := fmt.Sprintf("The lease timed out: no HttpNfcLeaseProgress within %s.", l.st.timeout)
		l.State = types.HttpNfcLeaseStateError
		l.Error = &types.LocalizedMethodFault{Fault: &types.Timedout{}, LocalizedMessage: msg}
		log.Printf("nfc lease %s: %s", l.Self.Value, msg)
		l.end()
	})
}

// NewHttpNfcLease registers a lease owned by the calling session, ready at once, that times out
// after the configured lease timeout without progress.
func NewHttpNfcLease(ctx *Context, entity types.ManagedObjectReference) *HttpNfcLease {
	timeout := currentFaults().leaseTimeout()
	lease := &HttpNfcLease{
		HttpNfcLease: mo.HttpNfcLease{
			Info: &types.HttpNfcLeaseInfo{
				Entity:       entity,
				LeaseTimeout: int32(math.Ceil(timeout.Seconds())),
			},
			State: types.HttpNfcLeaseStateReady,
		},
		files: make(map[string]string),
		st: &leaseState{
			svc:          ctx.svc,
			session:      ctx.Session.Key,
			timeout:      timeout,
			lastProgress: time.Now(),
			done:         make(chan struct{}),
		},
	}

	ctx.Session.Put(lease)
	nfcLease.Store(lease.Reference(), lease)
	lease.st.timer = time.AfterFunc(timeout, lease.expire)

	return lease
}

// leaseFault is what real vSphere answers for calls on a lease that already failed.
func (l *HttpNfcLease) leaseFault() *soap.Fault {
	if l.State == types.HttpNfcLeaseStateError && l.Error != nil {
		return Fault(l.Error.LocalizedMessage, l.Error.Fault)
	}
	return nil
}

func (l *HttpNfcLease) HttpNfcLeaseComplete(ctx *Context, req *types.HttpNfcLeaseComplete) soap.HasFault {
	if f := l.leaseFault(); f != nil {
		return &methods.HttpNfcLeaseCompleteBody{Fault_: f}
	}
	l.State = types.HttpNfcLeaseStateDone
	l.end()
	ctx.Session.Remove(req.This)

	return &methods.HttpNfcLeaseCompleteBody{
		Res: new(types.HttpNfcLeaseCompleteResponse),
	}
}

func (l *HttpNfcLease) HttpNfcLeaseAbort(ctx *Context, req *types.HttpNfcLeaseAbort) soap.HasFault {
	if l.State == types.HttpNfcLeaseStateReady {
		msg := "Operation was canceled by the client (HttpNfcLeaseAbort)."
		l.State = types.HttpNfcLeaseStateError
		l.Error = &types.LocalizedMethodFault{Fault: &types.RequestCanceled{}, LocalizedMessage: msg}
	}
	l.end()
	ctx.Session.Remove(req.This)

	return &methods.HttpNfcLeaseAbortBody{
		Res: new(types.HttpNfcLeaseAbortResponse),
	}
}

func (l *HttpNfcLease) HttpNfcLeaseProgress(ctx *Context, req *types.HttpNfcLeaseProgress) soap.HasFault {
	if f := l.leaseFault(); f != nil {
		return &methods.HttpNfcLeaseProgressBody{Fault_: f}
	}
	if req.Percent < 0 || req.Percent > 100 {
		return &methods.HttpNfcLeaseProgressBody{
			Fault_: Fault("percent must be 0..100", &types.InvalidArgument{InvalidProperty: "percent"}),
		}
	}
	l.TransferProgress = req.Percent
	l.st.lastProgress = time.Now()

	return &methods.HttpNfcLeaseProgressBody{
		Res: new(types.HttpNfcLeaseProgressResponse),
	}
}

// ServeNFC handles NFC file upload (import leases) and download (export leases).
func ServeNFC(w http.ResponseWriter, r *http.Request) {
	p := strings.Split(r.URL.Path, "/")
	id, name := p[len(p)-2], p[len(p)-1]
	ref := types.ManagedObjectReference{Type: "HttpNfcLease", Value: id}
	l, ok := nfcLease.Load(ref)
	if !ok {
		log.Printf("nfc %s %s: no such lease (ended, timed out or never existed)", r.Method, r.URL.Path)
		http.Error(w, "lease not found or no longer valid", http.StatusNotFound)
		return
	}
	lease := l.(*HttpNfcLease)
	file, ok := lease.files[name]
	if !ok {
		log.Printf("nfc %s: invalid NFC device id: %s", r.Method, name)
		http.NotFound(w, r)
		return
	}

	cookie, err := r.Cookie(soap.SessionCookieName)
	if err != nil || cookie.Value != lease.st.session {
		log.Printf("nfc %s %s: refused, no %s cookie of the session that opened the lease", r.Method, name, soap.SessionCookieName)
		http.Error(w, "a valid session cookie of the session that owns the lease is required", http.StatusForbidden)
		return
	}
	if _, live := lease.st.svc.sm.getSession(cookie.Value); !live {
		log.Printf("nfc %s %s: refused, session logged out", r.Method, name)
		http.Error(w, "session is no longer valid", http.StatusForbidden)
		return
	}

	if state := lease.State; state != types.HttpNfcLeaseStateReady {
		log.Printf("nfc %s %s: refused, lease is %s", r.Method, name, state)
		http.Error(w, "lease is "+string(state), http.StatusNotFound)
		return
	}

	switch r.Method {
	case http.MethodPut, http.MethodPost:
		n, err := io.Copy(ioutil.Discard, r.Body)
		log.Printf("nfc %s %s: received %d bytes (err=%v)", r.Method, file, n, err)
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	case http.MethodGet, http.MethodHead:
		serveStream(w, r, lease, file)
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

// serveStream sends the file chunked (no Content-Length), as ESXi streams the stream-optimized
// VMDK it generates, with the current rate limit / cut fault; it cuts the transfer when the
// lease ends.
func serveStream(w http.ResponseWriter, r *http.Request, lease *HttpNfcLease, file string) {
	f, err := os.Open(file)
	if err != nil {
		log.Printf("nfc GET %s: %s", file, err)
		http.NotFound(w, r)
		return
	}
	defer f.Close()

	flt := takeDownloadFaults()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush() // headers out now: the body goes chunked
	}
	if r.Method == http.MethodHead {
		return
	}

	chunk := int64(64 << 10)
	if flt.RateLimit > 0 && flt.RateLimit/10 < chunk {
		chunk = flt.RateLimit / 10
		if chunk < 512 {
			chunk = 512
		}
	}
	buf := make([]byte, chunk)
	start := time.Now()
	var sent int64
	cut := func(why string) {
		log.Printf("nfc GET %s: cut after %d bytes: %s", file, sent, why)
		panic(http.ErrAbortHandler) // drop the connection: no terminating chunk
	}
	for {
		select {
		case <-lease.st.done:
			cut("lease " + string(lease.State))
		case <-r.Context().Done():
			log.Printf("nfc GET %s: client went away after %d bytes", file, sent)
			return
		default:
		}
		n := chunk
		if flt.CutAfter > 0 {
			if sent >= flt.CutAfter {
				cut("cut_after fault")
			}
			if left := flt.CutAfter - sent; left < n {
				n = left
			}
		}
		m, rerr := io.ReadFull(f, buf[:n])
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				log.Printf("nfc GET %s: write failed after %d bytes: %s", file, sent, werr)
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
			sent += int64(m)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			cut(rerr.Error())
		}
		if flt.RateLimit > 0 {
			due := start.Add(time.Duration(float64(sent) / float64(flt.RateLimit) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-lease.st.done:
					t.Stop()
					cut("lease " + string(lease.State))
				case <-r.Context().Done():
					t.Stop()
					return
				}
			}
		}
	}
	log.Printf("nfc GET %s: sent %d bytes", file, sent)
}
