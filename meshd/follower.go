package meshd

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/palisade-cc/palisade/keyd/api"
)

// PeerSource is keyd's peer directory (production: *api.Client over aTLS).
type PeerSource interface {
	Peers(ctx context.Context, since uint64, wait time.Duration) (*api.PeerSet, error)
}

// SocketSource is keyd's peer directory through attestd's unix socket
// (attestd serve, default /run/palisade/keyd.sock): an api.Client whose
// HTTP goes to the socket, so answers and errors (ErrDenied once keyd
// revoked this node, ErrRetryLater while keyd is unreachable) read as
// keyd's own. meshd holds no attested session itself: attestd keeps the
// attestation code and attests with the claims it joined with.
func SocketSource(path string) *api.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "unix", path)
		},
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
		// A long poll waits up to api.MaxPeersWait; attestd may need a
		// fresh attested handshake with keyd first.
		ResponseHeaderTimeout: api.MaxPeersWait + 45*time.Second,
		DisableCompression:    true,
	}
	// The host is a placeholder: the dialer ignores it.
	return &api.Client{HTTP: &http.Client{Transport: tr}, Base: "http://attestd"}
}

// Follower long-polls keyd's peer set and hands every new revision to an
// apply function. When keyd cannot be reached it keeps the last set (the
// mesh stays up), retries with capped exponential back-off and reports
// itself stale; it never invents a set.
type Follower struct {
	// Source is keyd.
	Source PeerSource
	// Wait is the long-poll duration (0: api.DefaultPeersWait).
	Wait time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failure
	// (0: 250 ms and 30 s).
	MinBackoff, MaxBackoff time.Duration
	// StaleAfter is how long without an answer from keyd makes the set
	// stale (0: Wait + 15 s).
	StaleAfter time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Logger (nil: discard).
	Logger *slog.Logger

	mu sync.Mutex
	st FollowerStatus
}

// FollowerStatus is the follower's view of keyd.
type FollowerStatus struct {
	// Revision is the last applied peer set's revision (0: none yet).
	Revision uint64 `json:"revision"`
	// Peers is its number of entries, this node included.
	Peers int `json:"peers"`
	// LastContact is when keyd last answered.
	LastContact time.Time `json:"last_contact"`
	// LastApplied is when a set was last applied.
	LastApplied time.Time `json:"last_applied"`
	// Stale: no answer for StaleAfter; the applied set may be outdated.
	Stale bool `json:"stale"`
	// Failures counts consecutive failures; LastError is the latest.
	Failures  int    `json:"failures"`
	LastError string `json:"last_error,omitempty"`
}

func (f *Follower) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

func (f *Follower) wait() time.Duration {
	if f.Wait > 0 {
		return f.Wait
	}
	return api.DefaultPeersWait
}

// Status reports the current state; Stale is computed at the call.
func (f *Follower) Status() FollowerStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.st
	stale := f.StaleAfter
	if stale <= 0 {
		stale = f.wait() + 15*time.Second
	}
	s.Stale = s.LastContact.IsZero() || f.now().Sub(s.LastContact) > stale
	return s
}

// Run follows keyd until ctx ends. apply is called with each answer; if it
// fails the same revision is fetched and applied again after a back-off.
func (f *Follower) Run(ctx context.Context, apply func(context.Context, *api.PeerSet) error) error {
	minB, maxB := f.MinBackoff, f.MaxBackoff
	if minB <= 0 {
		minB = 250 * time.Millisecond
	}
	if maxB < minB {
		maxB = max(30*time.Second, minB)
	}
	var since uint64
	applied := false
	backoff := minB
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		set, err := f.Source.Peers(ctx, since, f.wait())
		if err == nil {
			f.mu.Lock()
			f.st.LastContact = f.now()
			f.mu.Unlock()
			// Apply every answer, not only new revisions: the diff is
			// empty when nothing changed, and a peer someone added to
			// the device by hand is removed again.
			{
				if applied && set.Revision < since && f.Logger != nil {
					f.Logger.Warn("keyd's peer set revision went back", "had", since, "got", set.Revision)
				}
				err = apply(ctx, set)
				if err == nil {
					since, applied = set.Revision, true
					f.mu.Lock()
					f.st.Revision, f.st.Peers, f.st.LastApplied = set.Revision, len(set.Peers), f.now()
					f.mu.Unlock()
				}
			}
		}
		if err == nil {
			backoff = minB
			f.mu.Lock()
			f.st.Failures, f.st.LastError = 0, ""
			f.mu.Unlock()
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		f.mu.Lock()
		f.st.Failures++
		f.st.LastError = err.Error()
		n := f.st.Failures
		f.mu.Unlock()
		if f.Logger != nil {
			f.Logger.Warn("peer set: keeping the last applied set", "revision", since, "failures", n, "err", err,
				"retry_in", backoff, "denied", errors.Is(err, api.ErrDenied))
		}
		// Full jitter in [backoff/2, backoff) so restarted nodes do not
		// reach a restarted keyd in lockstep.
		d := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, maxB)
	}
}
