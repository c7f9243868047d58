// Package nodestatus serves POST /node/v1/status on the boot HTTP listener:
// a booting node's own report of its progress (booting, attested, unlocked,
// failed). It is not an admin API and not a trust decision: the node has no
// token, it is identified only by the source address of its connection (the
// address its DHCP lease holds), and what it says is shown to the operator,
// never acted on.
package nodestatus

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// Path is where nodes post their status (initramfs/api.StatusPath).
const Path = "/node/v1/status"

// MaxBody bounds a report; a valid one is far smaller.
const MaxBody = 1 << 10

// bodyTimeout bounds reading a report's body.
const bodyTimeout = 5 * time.Second

// Recorder stores a report for the machine at an address; the inventory
// implements it. An address that is no accepted machine's lease is
// inventory.ErrNotFound; a bad report an *inventory.FieldError.
type Recorder interface {
	NodeStatus(ip netip.Addr, r inventory.NodeReport) (inventory.Machine, error)
}

// Results, the values of the "result" label.
const (
	resultOK          = "ok"
	resultUnknown     = "unknown_source"
	resultBad         = "bad_request"
	resultRateLimited = "rate_limited"
	resultError       = "error"
)

// Handler serves Path. The zero value is not usable: use New.
type Handler struct {
	rec Recorder
	log *slog.Logger
	lim *limiter
	m   *prometheus.CounterVec
}

// Options configure a Handler; zero values are the defaults.
type Options struct {
	// Rate is the reports per second one source address may make on
	// average (default 1), Burst how many at once (default 5): a node
	// makes four per boot.
	Rate  float64
	Burst int
	// Now is the clock of the limiter (default time.Now).
	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// New returns the handler over rec.
func New(rec Recorder, o Options) (*Handler, error) {
	if o.Rate <= 0 {
		o.Rate = 1
	}
	if o.Burst <= 0 {
		o.Burst = 5
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{rec: rec, log: o.Logger, lim: newLimiter(o.Rate, o.Burst, o.Now),
		m: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provisioner_node_status_total",
			Help: "Status reports from nodes on the boot listener, by reported state and result.",
		}, []string{"state", "result"})}
	for _, st := range inventory.NodeStates {
		for _, r := range []string{resultOK, resultUnknown, resultBad, resultRateLimited, resultError} {
			h.m.WithLabelValues(string(st), r)
		}
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(h.m); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// errorBody is the JSON of a refusal, as the admin API writes it.
type errorBody struct {
	Message string `json:"error"`
	Field   string `json:"field,omitempty"`
}

func (h *Handler) refuse(w http.ResponseWriter, status int, field, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Message: msg, Field: field})
}

// ServeHTTP checks the method, the source's rate, the body, then records.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	state := "invalid"
	result := resultBad
	defer func() { h.m.WithLabelValues(state, result).Inc() }()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		h.refuse(w, http.StatusMethodNotAllowed, "", "POST only")
		return
	}
	src, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		result = resultError
		h.refuse(w, http.StatusInternalServerError, "", "no source address")
		return
	}
	ip := src.Addr().Unmap()
	// Before anything is read or looked up, so a flood costs little.
	if !h.lim.allow(ip) {
		result = resultRateLimited
		w.Header().Set("Retry-After", "1")
		h.refuse(w, http.StatusTooManyRequests, "", "too many reports from "+ip.String())
		return
	}
	// A report is one small write; a body that trickles in must not hold
	// the connection (the listener also serves multi-GB images, so it has
	// no global read timeout).
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.refuse(w, http.StatusBadRequest, "", "body over 1 KiB")
			return
		}
		h.refuse(w, http.StatusBadRequest, "", "reading the body: "+err.Error())
		return
	}
	rep, field, err := decode(b)
	if err != nil {
		h.refuse(w, http.StatusBadRequest, field, err.Error())
		return
	}
	if err := rep.Validate(); err != nil {
		var fe *inventory.FieldError
		if errors.As(err, &fe) {
			field = fe.Field
		}
		h.refuse(w, http.StatusBadRequest, field, err.Error())
		return
	}
	state = string(rep.State)
	m, err := h.rec.NodeStatus(ip, rep)
	var fe *inventory.FieldError
	switch {
	case err == nil:
		result = resultOK
		h.log.Info("node status", "mac", m.MAC, "ip", ip, "state", rep.State, "class", rep.Class, "machine_state", m.State)
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, inventory.ErrNotFound):
		result = resultUnknown
		h.log.Debug("node status from an unknown address", "ip", ip, "state", rep.State)
		// The same answer whatever the reason (no lease, not accepted):
		// a probe learns nothing about the inventory.
		h.refuse(w, http.StatusNotFound, "", "no accepted machine has this address")
	case errors.As(err, &fe):
		h.refuse(w, http.StatusBadRequest, fe.Field, fe.Error())
	default:
		result = resultError
		h.log.Error("node status not recorded", "ip", ip, "err", err)
		h.refuse(w, http.StatusInternalServerError, "", "internal error")
	}
}

// decode reads one JSON object with no unknown fields; field names the bad
// field where encoding/json says which.
func decode(b []byte) (inventory.NodeReport, string, error) {
	var rep inventory.NodeReport
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	err := dec.Decode(&rep)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err == nil {
		return rep, "", nil
	}
	field := ""
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te):
		field = te.Field
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field = strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
	}
	return inventory.NodeReport{}, field, errors.New("bad JSON body: " + err.Error())
}

// limiter is a token bucket per source address. The table is bounded: when
// full, buckets that have refilled (idle sources) are dropped, and if none
// has, the new source is refused rather than memory grown.
type limiter struct {
	mu    sync.Mutex
	rate  float64
	burst float64
	now   func() time.Time
	b     map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

const maxSources = 4096

func newLimiter(rate float64, burst int, now func() time.Time) *limiter {
	return &limiter{rate: rate, burst: float64(burst), now: now, b: map[netip.Addr]*bucket{}}
}

func (l *limiter) allow(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b, ok := l.b[ip]
	if !ok {
		if len(l.b) >= maxSources {
			for k, v := range l.b {
				if v.tokens+now.Sub(v.at).Seconds()*l.rate >= l.burst {
					delete(l.b, k)
				}
			}
			if len(l.b) >= maxSources {
				return false
			}
		}
		b = &bucket{tokens: l.burst, at: now}
		l.b[ip] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
