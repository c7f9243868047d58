package ui

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/palisade-cc/palisade/provisioner/api"
	"github.com/palisade-cc/palisade/provisioner/inventory"
)

const (
	adminTok = "ui-test-admin-token-0123"
	readTok  = "ui-test-read-token-01234"
)

// serve starts the page and the API on one loopback origin, as Run does.
func serve(t *testing.T) (*httptest.Server, *inventory.Store) {
	t.Helper()
	dir := t.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inv.db"), inventory.Options{DefaultProfile: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	im, err := api.NewImages(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := api.New(inv, api.Options{AdminToken: adminTok, ReadOnlyToken: readTok, Images: im})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/api/", a)
	mux.Handle("/", Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, inv
}

func TestStatic(t *testing.T) {
	srv, _ := serve(t)
	for _, p := range []string{"/", "/app.js", "/style.css"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(b) == 0 {
			t.Errorf("%s: %d, %d bytes", p, resp.StatusCode, len(b))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("%s: CSP %q", p, csp)
		}
	}
	// The page must never put API data into HTML.
	js, _ := static.ReadFile("static/app.js")
	if strings.Contains(string(js), "innerHTML") {
		t.Error("app.js uses innerHTML")
	}
}

func chromium(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("chromium")
	if err != nil {
		if _, err2 := os.Stat("/usr/bin/chromium"); err2 == nil {
			return "/usr/bin/chromium"
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium not installed but CI=%s: install Debian's chromium package", os.Getenv("CI"))
		}
		t.Skip("chromium not installed (Debian package chromium); skipping the browser test")
	}
	return p
}

func browser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	return bctx
}

func artifact(t *testing.T, name string, b []byte) {
	t.Helper()
	dir := os.Getenv("PALISADE_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", p)
}

// TestBrowserAccept loads the page in headless Chromium, signs in, sees a
// discovered machine, clicks accept, sees the state change, and checks the
// API agrees.
func TestBrowserAccept(t *testing.T) {
	srv, inv := serve(t)
	if err := inv.PutProfile(inventory.Profile{Name: "worker", Image: "uki.efi", Platform: "tpm", Role: "worker",
		KeydHints: []string{"10.0.0.2:7443", "10.0.0.3:7443"}, Cluster: "prod-1"}); err != nil {
		t.Fatal(err)
	}
	const mac = "52:54:00:00:00:01"
	hw, _ := net.ParseMAC(mac)
	if _, err := inv.Boot(context.Background(), inventory.Request{MAC: hw, Arch: 7, PXE: true, MessageType: "DISCOVER"}); err != nil {
		t.Fatal(err)
	}
	ctx := browser(t)
	row := `tr[data-mac="` + mac + `"]`
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(css(sel)))
		if err != nil {
			t.Fatalf("browser: text of %s: %v", sel, err)
		}
		return s
	}
	do := func(steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("browser: %v", err)
		}
	}
	do(
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), adminTok),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(css(row+" .state-discovered")),
	)
	// Profiles show what their machines are hinted.
	do(chromedp.WaitVisible(css(`tr[data-profile="worker"] .cluster`)))
	if c, k := text(`tr[data-profile="worker"] .cluster`), text(`tr[data-profile="worker"] .keyd`); c != "prod-1" || k != "10.0.0.2:7443, 10.0.0.3:7443" {
		t.Errorf("profile row: cluster %q, keyd hints %q", c, k)
	}
	before := text(row + " .state")
	do(
		chromedp.Click(css(row+" button.accept")),
		chromedp.WaitVisible(css(row+" .state-accepted")),
	)
	after := text(row + " .state")
	if before != "discovered" || after != "accepted" {
		t.Errorf("state shown %q then %q, want discovered then accepted", before, after)
	}
	m, err := (&api.Client{Base: srv.URL, Token: adminTok}).Machine(context.Background(), mac)
	if err != nil || m.State != inventory.Accepted || m.AcceptedBy != "api:admin" {
		t.Errorf("API says %+v, %v; want accepted by api:admin", m, err)
	}
	// The boot answer and a transfer appear on the timeline.
	if _, err := inv.Boot(context.Background(), inventory.Request{MAC: hw, Arch: 7, PXE: true, MessageType: "REQUEST"}); err != nil {
		t.Fatal(err)
	}
	inv.RecordTransfer(inventory.Transfer{Remote: netip.MustParseAddr("127.0.0.5"), File: "uki.efi", Bytes: 4096, Protocol: "tftp", Duration: 30 * time.Millisecond})
	do(
		chromedp.WaitVisible(css(row+" .state-booting")),
		chromedp.Click(css(row+" button.show-timeline")),
		chromedp.WaitVisible(css("#events li")),
	)
	timeline := text("#events")
	for _, want := range []string{"discover", "accept", "uki.efi", "4096 bytes", "booting"} {
		if !strings.Contains(timeline, want) {
			t.Errorf("timeline lacks %q:\n%s", want, timeline)
		}
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if len(shot) < 1000 || string(shot[1:4]) != "PNG" {
		t.Errorf("screenshot of %d bytes", len(shot))
	}
	artifact(t, "provisioner-ui.png", shot)
	// The token stays in session storage, not in a cookie or local storage.
	stored, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`sessionStorage.getItem("palisade-provisioner-token")`))
	local, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`String(localStorage.length) + document.cookie`))
	if stored != adminTok || local != "0" {
		t.Errorf("token storage: session %q, local+cookie %q", stored, local)
	}
}

// TestBrowserReadOnly: a read-only token sees machines but no accept button,
// and a wrong token is refused at sign-in.
func TestBrowserReadOnly(t *testing.T) {
	srv, inv := serve(t)
	hw, _ := net.ParseMAC("52:54:00:00:00:02")
	inv.Boot(context.Background(), inventory.Request{MAC: hw, Arch: 7, PXE: true})
	ctx := browser(t)
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	err := chromedp.Do(ctx,
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), "wrong-token-wrong-token"),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.ID("login-error")),
	)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	loginErr, err := chromedp.Run(ctx, chromedp.Poll[string](`document.getElementById("login-error").textContent || null`, chromedp.WithPollingTimeout(10*time.Second)))
	if err != nil {
		t.Fatalf("browser: login error: %v", err)
	}
	err = chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("token"), readTok),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(css(`tr[data-mac="52:54:00:00:00:02"] .state-discovered`)),
	)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	buttons, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("button.accept").length`))
	if err != nil {
		t.Fatal(err)
	}
	role, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("role")))
	if !strings.Contains(loginErr, "not accepted") {
		t.Errorf("wrong token: login error %q", loginErr)
	}
	if buttons != 0 || !strings.Contains(role, "read-only") {
		t.Errorf("read-only view: %d accept buttons, role %q", buttons, role)
	}
}
