package keyd

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
)

// rateLimiter is a token bucket per source IP. Buckets idle long enough to
// be full again are dropped, so a scan from many addresses costs memory
// only while it lasts (and at most maxBuckets).
type rateLimiter struct {
	rate  float64
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

const maxBuckets = 1 << 16

func newRateLimiter(rate float64, burst int, now func() time.Time) *rateLimiter {
	return &rateLimiter{rate: rate, burst: float64(burst), now: now, buckets: map[string]*bucket{}}
}

// allow takes a token of source ip, or reports false.
func (r *rateLimiter) allow(ip string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.swept) > time.Minute || len(r.buckets) >= maxBuckets {
		full := time.Duration(r.burst / r.rate * float64(time.Second))
		for k, b := range r.buckets {
			if now.Sub(b.last) > full {
				delete(r.buckets, k)
			}
		}
		r.swept = now
		if len(r.buckets) >= maxBuckets {
			return false // under a flood from many sources, new ones wait
		}
	}
	b, ok := r.buckets[ip]
	if !ok {
		b = &bucket{tokens: r.burst, last: now}
		r.buckets[ip] = b
	}
	b.tokens += now.Sub(b.last).Seconds() * r.rate
	if b.tokens > r.burst {
		b.tokens = r.burst
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func hostOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// limitedListener closes connections from sources over their rate before
// any handshake work: the peer sees the connection closed, which its
// client reports as "retry later" (api.ErrRetryLater), never as a verdict.
type limitedListener struct {
	net.Listener
	rl       *rateLimiter
	rejected func()
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.rl.allow(hostOf(c.RemoteAddr())) {
			return c, nil
		}
		l.rejected()
		_ = c.Close()
	}
}

// limitedVerifier bounds concurrent verifications of one keyd across all
// platforms and times each one. A verification waits for a slot as long as
// its handshake allows; it is never denied for want of one.
type limitedVerifier struct {
	attest.Verifier
	slots   chan struct{}
	observe func(p attest.Platform, d time.Duration, err error)
}

func (v *limitedVerifier) Verify(ctx context.Context, ev *attest.Evidence, in attest.Input) (*attest.Verified, error) {
	select {
	case v.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, attest.Denyf(attest.ClassProtocol, "verification slot: %v", ctx.Err())
	}
	defer func() { <-v.slots }()
	start := time.Now()
	out, err := v.Verifier.Verify(ctx, ev, in)
	v.observe(v.Platform(), time.Since(start), err)
	return out, err
}
