package attestd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/attestd/disk"
	iapi "github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/manifest"
)

// statusSink is the provisioner's node-status endpoint: it records every
// body it is sent (decoded strictly, as the provisioner does).
type statusSink struct {
	url  string
	mu   sync.Mutex
	got  []statusReport
	bods bytes.Buffer
	bad  []string
}

func newStatusSink(t testing.TB) *statusSink {
	s := &statusSink{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<10+1))
		s.mu.Lock()
		defer s.mu.Unlock()
		s.bods.Write(b)
		s.bods.WriteByte('\n')
		var rep statusReport
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		switch {
		case r.Method != http.MethodPost || r.URL.Path != iapi.StatusPath:
			s.bad = append(s.bad, r.Method+" "+r.URL.Path)
		case r.Header.Get("Content-Type") != "application/json":
			s.bad = append(s.bad, "content type "+r.Header.Get("Content-Type"))
		case len(b) > 1<<10 || dec.Decode(&rep) != nil:
			s.bad = append(s.bad, string(b))
		case len(rep.Detail) > 200:
			s.bad = append(s.bad, "detail over 200: "+rep.Detail)
		default:
			s.got = append(s.got, rep)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

// states lists "state" or "state/class" of each report, in order.
func (s *statusSink) states(t testing.TB) []string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bad) > 0 {
		t.Errorf("bad status requests: %q", s.bad)
	}
	var out []string
	for _, r := range s.got {
		if r.Class != "" {
			out = append(out, r.State+"/"+r.Class)
		} else {
			out = append(out, r.State)
		}
	}
	return out
}

func (s *statusSink) raw() string {
	if s == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bods.String()
}

func (s *statusSink) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got, s.bad = nil, nil
	s.bods.Reset()
}

func TestStatusDiskless(t *testing.T) {
	w := newWorld(t, worldOpts{})
	m, _ := w.snpNode()
	_, err := w.run(m, nil)
	must(t, err)
	// --state-disk off: no disk step, so attested is the last word.
	if d := cmp.Diff([]string{"booting", "attested"}, w.status.states(t)); d != "" {
		t.Errorf("reports (-want +got):\n%s", d)
	}
	w.status.mu.Lock()
	det := w.status.got[1].Detail
	w.status.mu.Unlock()
	if !strings.Contains(det, "profile="+nodeProfile) || !strings.Contains(det, "keyd="+w.addr) {
		t.Errorf("attested detail %q lacks profile and keyd", det)
	}
	// With the disk step and no disk at all: attested, marked diskless.
	w.status.reset()
	n := newDiskNode(t, w.dir, "unused.img")
	_, err = w.runDisk(n)
	must(t, err)
	if d := cmp.Diff([]string{"booting", "attested"}, w.status.states(t)); d != "" || !strings.Contains(w.status.raw(), " diskless") {
		t.Errorf("diskless reports (-want +got):\n%s\n%s", d, w.status.raw())
	}
}

func TestStatusDiskUnlocked(t *testing.T) {
	w := newWorld(t, worldOpts{})
	n := newDiskNode(t, w.dir, "vda.img")
	_, err := w.runDisk(n, n.img)
	must(t, err)
	if d := cmp.Diff([]string{"booting", "attested", "unlocked"}, w.status.states(t)); d != "" {
		t.Errorf("first boot reports (-want +got):\n%s", d)
	}
	_, err = w.runDisk(n, n.img)
	must(t, err)
	if got := w.status.states(t); len(got) != 6 || got[5] != "unlocked" {
		t.Errorf("reboot reports %q, want booting, attested, unlocked again", got)
	}
	if !strings.Contains(w.status.raw(), `uuid=`) {
		t.Errorf("unlocked report names no disk:\n%s", w.status.raw())
	}
	checkNoKeyLeak(t, w, n, strings.TrimSpace(strings.SplitN(strings.SplitN(w.status.raw(), "uuid=", 2)[1], " ", 2)[0]))
}

func TestStatusFailures(t *testing.T) {
	t.Run("denied", func(t *testing.T) {
		w := newWorld(t, worldOpts{admitting: func(m *manifest.Manifest) {
			m.References[0].SNP = cloneSNP(m.References[0].SNP)
			m.References[0].SNP.HostData = bytes.Repeat([]byte{0x22}, 32)
		}})
		m, _ := w.snpNode()
		_, err := w.run(m, nil)
		if ExitCode(err) != ExitDenied {
			t.Fatalf("err %v, want a denial", err)
		}
		if d := cmp.Diff([]string{"booting", "failed/denied"}, w.status.states(t)); d != "" {
			t.Errorf("reports (-want +got):\n%s", d)
		}
	})
	t.Run("disk uuid", func(t *testing.T) {
		w := newWorld(t, worldOpts{})
		a := newDiskNode(t, w.dir, "a.img")
		_, err := w.runDisk(a, a.img)
		must(t, err)
		w.status.reset()
		b := newDiskNode(t, w.dir, "b.img")
		_, err = w.runDisk(b, b.img)
		if ExitCode(err) != ExitDiskUUID {
			t.Fatalf("err %v, want exit %d", err, ExitDiskUUID)
		}
		if d := cmp.Diff([]string{"booting", "failed/disk-uuid"}, w.status.states(t)); d != "" {
			t.Errorf("reports (-want +got):\n%s", d)
		}
	})
	t.Run("hints name no keyd", func(t *testing.T) {
		// attestd refuses the hints, yet still says so where they point.
		w := newWorld(t, worldOpts{})
		w.writeHints([]string{}, w.status.url)
		m, _ := w.snpNode()
		_, err := w.run(m, nil)
		if !errors.Is(err, ErrNoHints) {
			t.Fatalf("err %v, want ErrNoHints", err)
		}
		if d := cmp.Diff([]string{"booting", "failed/config"}, w.status.states(t)); d != "" {
			t.Errorf("reports (-want +got):\n%s", d)
		}
	})
}

// The failure detail is the class's fixed text, never the error's: an
// error can quote a peer.
func TestStatusFailDetail(t *testing.T) {
	for err, class := range map[error]string{
		fmt.Errorf("x: %w", ErrDenied):             "denied",
		fmt.Errorf("x: %w", ErrNoProfile):          "no-profile",
		fmt.Errorf("x: %w", ErrDeadline):           "deadline",
		fmt.Errorf("x: %w", disk.ErrForeign):       "disk-foreign",
		fmt.Errorf("x: %w", disk.ErrUUIDMismatch):  "disk-uuid",
		fmt.Errorf("x: %w", disk.ErrHeaderAltered): "disk-header",
		fmt.Errorf("x: %w", disk.ErrKeyRejected):   "disk-header",
		errors.New("secret-looking peer text"):     "config",
	} {
		if got := ExitClass(err); got != class {
			t.Errorf("ExitClass(%v) = %q, want %q", err, got, class)
		}
		d := failDetail(err)
		if strings.Contains(d, "x:") || strings.Contains(d, "peer text") || !strings.HasPrefix(d, fmt.Sprintf("exit %d: ", ExitCode(err))) {
			t.Errorf("failDetail(%v) = %q", err, d)
		}
	}
}

// A dead or hanging status URL neither fails nor holds up the join: each
// report has StatusTimeout, the queue never blocks, and Run waits at most
// one StatusTimeout for what is left.
func TestStatusDeadOrSlow(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	deadURL := "http://" + dead.Addr().String()
	dead.Close() // connection refused from now on

	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release // never answers while the node boots
	}))
	t.Cleanup(func() { close(release); slow.Close() })

	for name, url := range map[string]string{"dead": deadURL, "hanging": slow.URL} {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t, worldOpts{})
			w.writeHints([]string{w.addr}, url)
			m, _ := w.snpNode()
			type res struct {
				err error
				d   time.Duration
			}
			done := make(chan res, 1)
			go func() {
				start := time.Now()
				_, err := w.run(m, nil)
				done <- res{err, time.Since(start)}
			}()
			select {
			case r := <-done:
				if r.err != nil {
					t.Fatalf("join with a %s status URL: %v", name, r.err)
				}
				t.Logf("join with a %s status URL took %s", name, r.d)
			case <-time.After(30 * time.Second):
				t.Fatalf("join with a %s status URL did not return", name)
			}
		})
	}
}

// report never blocks, even with the sender stuck; close returns after its
// bound and abandons the rest, the report in flight included.
func TestReporterNeverBlocks(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	t.Cleanup(func() { close(release); srv.Close() })
	// Each report may take an hour; close may wait 50 ms.
	r := startReporter(srv.URL+iapi.StatusPath, newStatusClient(), time.Hour, 50*time.Millisecond, slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() {
		for range 1000 {
			r.report(StatusBooting, "", "x")
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("report blocked behind a hanging provisioner")
	}
	closed := make(chan struct{})
	go func() { r.close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("close waited on a hanging provisioner past its timeout")
	}
	r.report(StatusFailed, "config", "after close") // no panic, dropped
	var nilRep *reporter
	nilRep.report(StatusBooting, "", "")
	nilRep.close()
}

func TestStatusURLHint(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for hints, want := range map[string]string{
		`{"keyd":["a:1"],"cluster":"c","status":"http://10.0.0.1:8080"}`:  "http://10.0.0.1:8080" + iapi.StatusPath,
		`{"keyd":["a:1"],"cluster":"c","status":"http://10.0.0.1:8080/"}`: "http://10.0.0.1:8080" + iapi.StatusPath,
		`{"status":"http://h:1","bogus":1}`:                               "http://h:1" + iapi.StatusPath,
		`{"keyd":["a:1"],"cluster":"c"}`:                                  "",
		`{"status":"https://h:1"}`:                                        "",
		`{"status":"http://user:pw@h:1"}`:                                 "",
		`{"status":"http://h:1/elsewhere"}`:                               "",
		`not json`:                                                        "",
	} {
		if got := statusURL([]byte(hints), log); got != want {
			t.Errorf("statusURL(%s) = %q, want %q", hints, got, want)
		}
	}
	// The strict reader of the join takes a hints file with a status.
	if _, err := ParseHints([]byte(`{"keyd":["a:1"],"cluster":"c","status":"http://h:1"}`)); err != nil {
		t.Errorf("ParseHints with status: %v", err)
	}
}
