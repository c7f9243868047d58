package atls

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
)

// DefaultMaxHandshakes bounds the handshakes a Listener runs at once.
const DefaultMaxHandshakes = 64

// ListenerOptions tune a Listener.
type ListenerOptions struct {
	// MaxHandshakes bounds concurrent handshakes (0: DefaultMaxHandshakes).
	// When all are busy the listener stops accepting until one finishes
	// or times out (Config.HandshakeTimeout), so stalled peers cost at most
	// this many connections for that long.
	MaxHandshakes int
	// OnDenied, if set, is called once per failed handshake with its
	// class, for metrics. It must not block.
	OnDenied func(remote net.Addr, class attest.Class)
}

// Listener accepts only attested connections: its Accept returns *Conn
// values whose handshake succeeded. Handshakes run concurrently, off the
// Accept path; failures are logged (Config.Logger), counted and reported to
// OnDenied. It suits http.Serve.
type Listener struct {
	inner net.Listener
	cfg   *Config
	opts  ListenerOptions

	ctx    context.Context
	cancel context.CancelFunc
	slots  chan struct{}
	ready  chan *Conn
	failed chan struct{} // closed when inner.Accept failed for good
	err    error         // set before failed is closed
	wg     sync.WaitGroup
	once   sync.Once

	mu      sync.Mutex
	denials map[attest.Class]uint64
}

var _ net.Listener = (*Listener)(nil)

// NewListener wraps inner; cfg is the server side of every handshake.
func NewListener(inner net.Listener, cfg *Config, opts ListenerOptions) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.MaxHandshakes < 0 {
		return nil, fmt.Errorf("atls listener: MaxHandshakes: %d, want > 0 (or 0 for %d)", opts.MaxHandshakes, DefaultMaxHandshakes)
	}
	if opts.MaxHandshakes == 0 {
		opts.MaxHandshakes = DefaultMaxHandshakes
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		inner: inner, cfg: cfg, opts: opts, ctx: ctx, cancel: cancel,
		slots:   make(chan struct{}, opts.MaxHandshakes),
		ready:   make(chan *Conn),
		failed:  make(chan struct{}),
		denials: make(map[attest.Class]uint64),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.ctx.Done():
			return
		}
		c, err := l.inner.Accept()
		if err != nil {
			<-l.slots
			if l.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Transient (e.g. out of file descriptors on some
				// systems): back off like net/http does.
				select {
				case <-time.After(backoff):
				case <-l.ctx.Done():
					return
				}
				backoff = min(2*backoff, time.Second)
				continue
			}
			l.err = err
			close(l.failed)
			return
		}
		backoff = 5 * time.Millisecond
		l.wg.Add(1)
		go l.handshake(c)
	}
}

func (l *Listener) handshake(c net.Conn) {
	defer l.wg.Done()
	defer func() { <-l.slots }()
	ac, err := Server(l.ctx, c, l.cfg)
	if err != nil {
		class := attest.ClassOf(err)
		l.mu.Lock()
		l.denials[class]++
		l.mu.Unlock()
		if l.opts.OnDenied != nil {
			l.opts.OnDenied(c.RemoteAddr(), class)
		}
		return
	}
	select {
	case l.ready <- ac:
	case <-l.ctx.Done():
		ac.Close()
	}
}

// Accept returns the next attested connection, a *Conn.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	case <-l.failed:
		return nil, fmt.Errorf("atls listener: %w", l.err)
	}
}

// Close stops accepting, aborts handshakes in progress, closes attested
// connections nobody accepted yet, and waits for all of it.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		l.cancel()
		err = l.inner.Close()
		l.wg.Wait()
	})
	return err
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Denials returns how many handshakes failed, by class.
func (l *Listener) Denials() map[attest.Class]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[attest.Class]uint64, len(l.denials))
	for k, v := range l.denials {
		m[k] = v
	}
	return m
}
