package attestd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	iapi "github.com/palisade-cc/palisade/initramfs/api"
)

// StatusTimeout bounds one status report, and the wait for the last ones
// when Run returns.
const StatusTimeout = time.Second

// maxStatusDetail is the most the provisioner takes (characters; attestd's
// details are ASCII).
const maxStatusDetail = 200

// Boot states attestd reports to the provisioner (docs/provisioner.md,
// "Node status").
const (
	StatusBooting  = "booting"
	StatusAttested = "attested"
	StatusUnlocked = "unlocked"
	StatusFailed   = "failed"
)

// statusReport is the body of POST <status>/node/v1/status. It carries
// states, exit class names and non-secret facts only (profile, platform,
// keyd address, disk UUID): the provisioner is outside the trusted base and
// the boot network is not private.
type statusReport struct {
	State  string `json:"state"`
	Class  string `json:"class,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// ExitClass names Run's error by its exit code, as reported in "failed".
func ExitClass(err error) string {
	switch ExitCode(err) {
	case ExitAdmitted:
		return "admitted"
	case ExitDenied:
		return "denied"
	case ExitNoProfile:
		return "no-profile"
	case ExitDeadline:
		return "deadline"
	case ExitDiskForeign:
		return "disk-foreign"
	case ExitDiskUUID:
		return "disk-uuid"
	case ExitDiskHeader:
		return "disk-header"
	}
	return "config"
}

// failDetail is a fixed text per class, never the error's own text: an
// error can quote what a remote peer said, and a report must not carry
// anything but what attestd chose to say.
func failDetail(err error) string {
	c := ExitCode(err)
	switch c {
	case ExitDenied:
		return fmt.Sprintf("exit %d: a verified keyd denied this node", c)
	case ExitNoProfile:
		return fmt.Sprintf("exit %d: the signed manifest has no profile of this platform", c)
	case ExitDeadline:
		return fmt.Sprintf("exit %d: no keyd admitted this node before the deadline", c)
	case ExitDiskForeign:
		return fmt.Sprintf("exit %d: no state disk; other disks hold data", c)
	case ExitDiskUUID:
		return fmt.Sprintf("exit %d: the disk's LUKS UUID is not the one keyd recorded", c)
	case ExitDiskHeader:
		return fmt.Sprintf("exit %d: the LUKS2 header was altered or keyd's key does not open it", c)
	}
	return fmt.Sprintf("exit %d: configuration or local failure", c)
}

// statusURL reads the status hint from the hints file, leniently: a hints
// file attestd refuses (no keyd, say) still names where to report that.
// An invalid URL is logged and not used.
func statusURL(hb []byte, log *slog.Logger) string {
	var h struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(hb, &h) != nil || h.Status == "" {
		return ""
	}
	if err := iapi.CheckStatusURL(h.Status); err != nil {
		log.Warn("status hint not used", "err", err)
		return ""
	}
	return strings.TrimSuffix(h.Status, "/") + iapi.StatusPath
}

// newStatusClient is the production client: no proxy from the
// environment, no redirects (the hint names the one place reports go), no
// connection kept.
func newStatusClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:             nil,
			DialContext:       (&net.Dialer{Timeout: StatusTimeout}).DialContext,
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// reporter sends status reports in order from one goroutine, so that a
// dead or slow provisioner never delays the boot: report only queues.
// Reports that do not fit the queue are dropped. A nil reporter (no status
// hint) does nothing.
type reporter struct {
	url     string
	client  *http.Client
	log     *slog.Logger
	timeout time.Duration // one report
	wait    time.Duration // close's bound for the rest

	mu     sync.Mutex
	closed bool
	q      chan statusReport
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func startReporter(url string, client *http.Client, timeout, wait time.Duration, log *slog.Logger) *reporter {
	if url == "" {
		return nil
	}
	r := &reporter{url: url, client: client, log: log, timeout: timeout, wait: wait,
		q: make(chan statusReport, 8), done: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	go func() {
		defer close(r.done)
		for rep := range r.q {
			r.send(rep)
		}
	}()
	return r
}

// report queues one report; it never blocks.
func (r *reporter) report(state, class, detail string) {
	if r == nil {
		return
	}
	if len(detail) > maxStatusDetail {
		detail = strings.ToValidUTF8(detail[:maxStatusDetail], "")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	select {
	case r.q <- statusReport{State: state, Class: class, Detail: detail}:
	default:
		r.log.Debug("status report dropped: queue full", "state", state)
	}
}

// close lets queued reports go out for at most r.wait, then abandons the
// rest, the one in flight included: the boot goes on either way.
func (r *reporter) close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.closed = true
	close(r.q)
	r.mu.Unlock()
	t := time.NewTimer(r.wait)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C:
		r.cancel()
		<-r.done
	}
	r.cancel()
}

func (r *reporter) send(rep statusReport) {
	b, err := json.Marshal(rep)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(b))
	if err != nil {
		r.log.Info("status report not sent", "state", rep.State, "err", err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		r.log.Info("status report not delivered", "state", rep.State, "url", r.url, "err", err)
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		r.log.Info("status report refused", "state", rep.State, "url", r.url, "status", resp.StatusCode)
		return
	}
	r.log.Debug("status reported", "state", rep.State)
}
