package nodestatus

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// world: an inventory with machine A (accepted, lease 127.0.0.21), B
// (accepted, lease 127.0.0.22) and D (discovered, lease 127.0.0.23), and
// the handler on a loopback listener.
type world struct {
	inv  *inventory.Store
	srv  *httptest.Server
	reg  *prometheus.Registry
	now  time.Time
	mu   sync.Mutex
	macs map[string]string // source address → MAC
}

const (
	macA = "52:54:00:00:0c:01"
	macB = "52:54:00:00:0c:02"
	macD = "52:54:00:00:0c:03"
	ipA  = "127.0.0.21"
	ipB  = "127.0.0.22"
	ipD  = "127.0.0.23"
	ipX  = "127.0.0.29" // no lease
)

func newWorld(t *testing.T) *world {
	t.Helper()
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), inventory.Options{DefaultProfile: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	if err := inv.PutProfile(inventory.Profile{Name: "worker", Image: "uki.efi", Platform: "tpm", Role: "worker"}); err != nil {
		t.Fatal(err)
	}
	w := &world{inv: inv, reg: prometheus.NewRegistry(), now: time.Unix(1_800_000_000, 0)}
	for _, m := range []struct{ mac, ip string }{{macA, ipA}, {macB, ipB}, {macD, ipD}} {
		hw, _ := net.ParseMAC(m.mac)
		if _, err := inv.Boot(context.Background(), inventory.Request{MAC: hw, MessageType: "request"}); err != nil {
			t.Fatal(err)
		}
		if m.mac != macD {
			if _, err := inv.Accept(m.mac, "", "test"); err != nil {
				t.Fatal(err)
			}
		}
		inv.LearnAddress(hw, netip.MustParseAddr(m.ip))
	}
	h, err := New(inv, Options{Registerer: w.reg, Now: w.clock})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	w.srv = httptest.NewServer(mux)
	t.Cleanup(w.srv.Close)
	return w
}

func (w *world) clock() time.Time { w.mu.Lock(); defer w.mu.Unlock(); return w.now }

func (w *world) advance(d time.Duration) { w.mu.Lock(); w.now = w.now.Add(d); w.mu.Unlock() }

// post sends body from source address src and returns the status and the
// refusal's field.
func (w *world) post(t *testing.T, src, body string) (int, string) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	resp, err := c.Post(w.srv.URL+Path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e errorBody
	if resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(b, &e); err != nil {
			t.Errorf("refusal body %q is not JSON: %v", b, err)
		}
	}
	return resp.StatusCode, e.Field
}

func (w *world) state(t *testing.T, mac string) inventory.State {
	t.Helper()
	m, err := w.inv.Machine(mac)
	if err != nil {
		t.Fatal(err)
	}
	return m.State
}

// A node is its source address: A's report moves A, never B, whatever the
// body says; an address no accepted machine leases gets 404.
func TestSourceIdentity(t *testing.T) {
	w := newWorld(t)
	if st, _ := w.post(t, ipA, `{"state":"attested","detail":"profile=snp-node"}`); st != http.StatusNoContent {
		t.Fatalf("A's report: %d", st)
	}
	if w.state(t, macA) != inventory.Attested || w.state(t, macB) != inventory.Accepted {
		t.Errorf("after A's report: A %s, B %s; want attested, accepted", w.state(t, macA), w.state(t, macB))
	}
	// A MAC in the body is not a way to speak for B: it is refused.
	if st, field := w.post(t, ipA, `{"state":"failed","mac":"`+macB+`"}`); st != http.StatusBadRequest || field != "mac" {
		t.Errorf("report naming a MAC: %d field %q, want 400 mac", st, field)
	}
	if w.state(t, macB) != inventory.Accepted {
		t.Errorf("B is %s", w.state(t, macB))
	}
	for name, src := range map[string]string{"no lease": ipX, "discovered machine": ipD} {
		if st, _ := w.post(t, src, `{"state":"failed","class":"denied"}`); st != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", name, st)
		}
	}
	if w.state(t, macD) != inventory.Discovered {
		t.Errorf("D is %s", w.state(t, macD))
	}
	if st, _ := w.post(t, ipB, `{"state":"failed","class":"disk-uuid","detail":"exit 7"}`); st != http.StatusNoContent || w.state(t, macB) != inventory.Failed {
		t.Errorf("B's failure: %d, B %s", st, w.state(t, macB))
	}
	tl, _ := w.inv.Timeline(macB)
	last := tl[len(tl)-1]
	if last.Kind != inventory.EventNodeStatus || last.Detail != "failed (disk-uuid): exit 7" || last.Remote != ipB {
		t.Errorf("B's last event %+v", last)
	}
	for _, c := range []struct {
		state, result string
		want          float64
	}{{"attested", resultOK, 1}, {"failed", resultOK, 1}, {"failed", resultUnknown, 2}, {"invalid", resultBad, 1}} {
		if got := count(t, w, c.state, c.result); got != c.want {
			t.Errorf("provisioner_node_status_total{state=%s,result=%s} = %v, want %v", c.state, c.result, got, c.want)
		}
	}
}

// count reads provisioner_node_status_total{state,result} from the registry.
func count(t *testing.T, w *world, state, result string) float64 {
	t.Helper()
	mfs, err := w.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "provisioner_node_status_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["state"] == state && l["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no counter state=%s result=%s", state, result)
	return 0
}

func TestRefusals(t *testing.T) {
	w := newWorld(t)
	for _, tc := range []struct {
		name, body, field string
	}{
		{"bad state", `{"state":"joined"}`, "state"},
		{"no state", `{}`, "state"},
		{"state not a string", `{"state":1}`, "state"},
		{"unknown field", `{"state":"booting","secret":"x"}`, "secret"},
		{"class on attested", `{"state":"attested","class":"denied"}`, "class"},
		{"bad class", `{"state":"failed","class":"a b"}`, "class"},
		{"long detail", `{"state":"booting","detail":"` + strings.Repeat("x", 201) + `"}`, "detail"},
		{"control in detail", `{"state":"booting","detail":"a\nb"}`, "detail"},
		{"not JSON", `state=booting`, ""},
		{"two objects", `{"state":"booting"}{"state":"booting"}`, ""},
		{"over 1 KiB", `{"state":"booting","detail":"` + strings.Repeat(" ", 1024) + `"}`, ""},
	} {
		w.advance(time.Minute) // not the rate limit under test
		st, field := w.post(t, ipA, tc.body)
		if st != http.StatusBadRequest || field != tc.field {
			t.Errorf("%s: %d field %q, want 400 field %q", tc.name, st, field, tc.field)
		}
	}
	if w.state(t, macA) != inventory.Accepted {
		t.Errorf("refused reports changed A: %s", w.state(t, macA))
	}
	resp, err := http.Get(w.srv.URL + Path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", resp.StatusCode)
	}
}

// Five at once, then one a second, per source; another source has its own
// budget.
func TestRateLimit(t *testing.T) {
	w := newWorld(t)
	body := `{"state":"booting"}`
	for i := range 5 {
		if st, _ := w.post(t, ipA, body); st != http.StatusNoContent {
			t.Fatalf("report %d within the burst: %d", i+1, st)
		}
	}
	if st, _ := w.post(t, ipA, body); st != http.StatusTooManyRequests {
		t.Errorf("sixth report at once: %d, want 429", st)
	}
	if st, _ := w.post(t, ipX, body); st != http.StatusNotFound {
		t.Errorf("another source: %d, want its own budget (404: no lease)", st)
	}
	w.advance(time.Second)
	if st, _ := w.post(t, ipA, body); st != http.StatusNoContent {
		t.Errorf("after a second: %d, want 204", st)
	}
	if st, _ := w.post(t, ipA, body); st != http.StatusTooManyRequests {
		t.Errorf("again at once: %d, want 429", st)
	}
	tl, _ := w.inv.Timeline(macA)
	n := 0
	for _, e := range tl {
		if e.Kind == inventory.EventNodeStatus {
			n++
		}
	}
	if n != 6 {
		t.Errorf("%d node-status events, want 6 (the limited ones are not stored)", n)
	}
}

// The table of sources stays bounded; idle sources make room.
func TestLimiterBounded(t *testing.T) {
	now := time.Unix(0, 0)
	l := newLimiter(1, 5, func() time.Time { return now })
	for i := range maxSources {
		if !l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})) {
			t.Fatalf("source %d refused", i)
		}
	}
	extra := netip.MustParseAddr("192.0.2.1")
	if l.allow(extra) || len(l.b) > maxSources {
		t.Errorf("table full of busy sources: a new one allowed, %d entries", len(l.b))
	}
	now = now.Add(time.Second)
	if !l.allow(extra) || len(l.b) > maxSources {
		t.Errorf("idle sources did not make room (%d entries)", len(l.b))
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"state":"failed","class":"denied","detail":"x"}`, `{"state":1}`, `{}`, `[`, `{"state":"booting"} x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, _, err := decode(b)
		if err != nil {
			return
		}
		if r.Validate() == nil && len(r.Detail) > 4*inventory.MaxNodeDetail {
			t.Fatalf("valid report with %d bytes of detail", len(r.Detail))
		}
	})
}
