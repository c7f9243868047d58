package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/palisade-cc/palisade/provisioner/inventory"
)

const (
	adminTok = "admin-secret-token"
	readTok  = "read-only-token"
)

type fixture struct {
	srv    *httptest.Server
	inv    *inventory.Store
	images *Images
}

func setup(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inv.db"), inventory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	im, err := NewImages(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(inv, Options{AdminToken: adminTok, ReadOnlyToken: readTok, Images: im})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, inv: inv, images: im}
}

func (f *fixture) client(tok string) *Client { return &Client{Base: f.srv.URL, Token: tok} }

func status(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func field(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Field
	}
	return ""
}

func discover(t *testing.T, inv *inventory.Store, mac string) {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	if _, err := inv.Boot(context.Background(), inventory.Request{MAC: hw, PXE: true, Arch: 7}); err != nil {
		t.Fatal(err)
	}
}

var worker = inventory.Profile{Name: "worker", Image: "uki.efi", Platform: "tpm", Role: "worker"}

func TestAuth(t *testing.T) {
	f := setup(t)
	discover(t, f.inv, "52:54:00:00:00:01")
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		tok    string
		call   func(c *Client) error
		status int
	}{
		{"no token read", "", func(c *Client) error { _, err := c.Machines(ctx, ""); return err }, 401},
		{"wrong token read", "admin-secret-tokeN", func(c *Client) error { _, err := c.Machines(ctx, ""); return err }, 401},
		{"prefix of token", adminTok[:5], func(c *Client) error { _, err := c.Machines(ctx, ""); return err }, 401},
		{"read-only read", readTok, func(c *Client) error { _, err := c.Machines(ctx, ""); return err }, 0},
		{"read-only accept", readTok, func(c *Client) error { _, err := c.Accept(ctx, "52:54:00:00:00:01", ""); return err }, 403},
		{"read-only forget", readTok, func(c *Client) error { return c.Forget(ctx, "52:54:00:00:00:01") }, 403},
		{"read-only put profile", readTok, func(c *Client) error { return c.PutProfile(ctx, worker) }, 403},
		{"read-only add image", readTok, func(c *Client) error { _, err := c.AddImage(ctx, "x.efi", strings.NewReader("x"), ""); return err }, 403},
		{"no token accept", "", func(c *Client) error { _, err := c.Accept(ctx, "52:54:00:00:00:01", ""); return err }, 401},
		{"admin read", adminTok, func(c *Client) error { _, err := c.Machines(ctx, ""); return err }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := status(tc.call(f.client(tc.tok))); got != tc.status {
				t.Errorf("status %d, want %d", got, tc.status)
			}
		})
	}
	if m, _ := f.inv.Machine("52:54:00:00:00:01"); m.State != inventory.Discovered {
		t.Errorf("a denied request changed the machine: %s", m.State)
	}
	// Basic auth and other schemes are not bearer tokens.
	req, _ := http.NewRequest("GET", f.srv.URL+"/api/v1/machines", nil)
	req.SetBasicAuth("admin", adminTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("basic auth: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if r, _ := f.client(readTok).WhoAmI(ctx); r != RoleReadOnly {
		t.Errorf("whoami read-only = %q", r)
	}
	if r, _ := f.client(adminTok).WhoAmI(ctx); r != RoleAdmin {
		t.Errorf("whoami admin = %q", r)
	}
}

func TestNewRejects(t *testing.T) {
	im := &Images{Dir: t.TempDir()}
	for _, o := range []Options{{Images: im}, {AdminToken: "a", ReadOnlyToken: "a", Images: im}, {AdminToken: "a"}} {
		if _, err := New(nil, o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

func TestMachineFlow(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	c := f.client(adminTok)
	discover(t, f.inv, "52:54:00:00:00:02")
	if err := c.PutProfile(ctx, worker); err != nil {
		t.Fatal(err)
	}
	ms, err := c.Machines(ctx, "discovered")
	if err != nil || len(ms) != 1 || ms[0].MAC != "52:54:00:00:00:02" {
		t.Fatalf("machines = %+v, %v", ms, err)
	}
	if ms, _ := c.Machines(ctx, "accepted"); len(ms) != 0 {
		t.Errorf("state filter let through %+v", ms)
	}
	_, err = c.Accept(ctx, "52:54:00:00:00:02", "nope")
	if status(err) != 400 || field(err) != "profile" {
		t.Errorf("accept with missing profile: %v", err)
	}
	m, err := c.Accept(ctx, "52-54-00-00-00-02", "worker")
	if err != nil || m.State != inventory.Accepted || m.Profile != "worker" || m.AcceptedBy != "api:admin" {
		t.Fatalf("accept = %+v, %v", m, err)
	}
	if _, err := c.Machine(ctx, "not-a-mac"); status(err) != 400 || field(err) != "mac" {
		t.Errorf("bad mac: %v", err)
	}
	if _, err := c.Machine(ctx, "52:54:00:00:00:99"); status(err) != 404 {
		t.Errorf("unknown mac: %v", err)
	}
	if _, err := c.Assign(ctx, "52:54:00:00:00:02", ""); status(err) != 400 || field(err) != "profile" {
		t.Errorf("assign without profile: %v", err)
	}
	if _, err := c.Report(ctx, "52:54:00:00:00:02", "bogus", ""); field(err) != "state" {
		t.Errorf("report bogus: %v", err)
	}
	if m, err := c.Report(ctx, "52:54:00:00:00:02", inventory.Joined, "node-1"); err != nil || m.State != inventory.Joined {
		t.Errorf("report = %+v, %v", m, err)
	}
	tl, err := c.Timeline(ctx, "52:54:00:00:00:02")
	if err != nil || len(tl) != 4 {
		t.Errorf("timeline = %+v, %v", tl, err)
	}
	ev, err := c.Events(ctx, tl[1].Seq, 10)
	if err != nil || len(ev) != 2 {
		t.Errorf("events after %d = %+v, %v", tl[1].Seq, ev, err)
	}
	if err := c.DeleteProfile(ctx, "worker"); status(err) != 409 {
		t.Errorf("delete profile in use: %v", err)
	}
	if err := c.Forget(ctx, "52:54:00:00:00:02"); err != nil {
		t.Fatal(err)
	}
	if err := c.Forget(ctx, "52:54:00:00:00:02"); status(err) != 404 {
		t.Errorf("forget twice: %v", err)
	}
	if err := c.DeleteProfile(ctx, "worker"); err != nil {
		t.Error(err)
	}
}

func TestProfilesAPI(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	c := f.client(adminTok)
	bad := worker
	bad.Platform = "sgx"
	if err := c.PutProfile(ctx, bad); status(err) != 400 || field(err) != "platform" {
		t.Errorf("bad platform: %v", err)
	}
	if err := c.PutProfile(ctx, worker); err != nil {
		t.Fatal(err)
	}
	got, err := c.Profile(ctx, "worker")
	if diff := cmp.Diff(worker, got); diff != "" || err != nil {
		t.Errorf("profile (-want +got) %v:\n%s", err, diff)
	}
	for _, tc := range []struct {
		body, field string
	}{
		{`{"name":"worker","image":"a","platform":"tpm","role":"worker","extra":1}`, "extra"},
		{`{"name":"worker","image":5}`, "image"},
		{`{"name":"other","image":"a","platform":"tpm","role":"worker"}`, "name"},
		{`{"name":"worker"`, ""},
	} {
		req, _ := http.NewRequest("PUT", f.srv.URL+"/api/v1/profiles/worker", strings.NewReader(tc.body))
		req.Header.Set("Authorization", "Bearer "+adminTok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e Error
		if err := decodeBody(resp, &e); err != nil || resp.StatusCode != 400 || e.Field != tc.field {
			t.Errorf("%s: %d %+v %v, want 400 field %q", tc.body, resp.StatusCode, e, err, tc.field)
		}
	}
	if _, err := c.Profile(ctx, "nope"); status(err) != 404 {
		t.Errorf("missing profile: %v", err)
	}
}

func TestImages(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	c := f.client(adminTok)
	data := bytes.Repeat([]byte("UKI!"), 1000)
	sum := sha256.Sum256(data)
	hexsum := hex.EncodeToString(sum[:])
	if _, err := c.AddImage(ctx, "uki.efi", bytes.NewReader(data), strings.Repeat("0", 64)); status(err) != 400 || field(err) != "sha256" {
		t.Errorf("wrong sha256: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.images.Dir, "uki.efi")); !os.IsNotExist(err) {
		t.Errorf("an image with a wrong hash was written: %v", err)
	}
	for _, name := range []string{"..", ".hidden", "a%2Fb", "-x"} {
		if _, err := c.AddImage(ctx, name, bytes.NewReader(data), ""); status(err) != 400 && status(err) != 404 {
			t.Errorf("name %q: %v", name, err)
		}
	}
	img, err := c.AddImage(ctx, "uki.efi", bytes.NewReader(data), hexsum)
	if err != nil || img.SHA256 != hexsum || img.Size != int64(len(data)) {
		t.Fatalf("add = %+v, %v", img, err)
	}
	got, err := os.ReadFile(filepath.Join(f.images.Dir, "uki.efi"))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("stored image differs: %v", err)
	}
	os.WriteFile(filepath.Join(f.images.Dir, "other.efi"), []byte("x"), 0o644)
	l, err := c.Images(ctx)
	if err != nil || len(l) != 2 || l[0].Name != "other.efi" || l[1].SHA256 != hexsum {
		t.Errorf("list = %+v, %v", l, err)
	}
	ents, _ := os.ReadDir(f.images.Dir)
	if len(ents) != 2 {
		t.Errorf("temp files left behind: %v", ents)
	}
	f.images.MaxSize = 10
	if _, err := c.AddImage(ctx, "big.efi", bytes.NewReader(data), ""); status(err) != 413 {
		t.Errorf("oversized image: %v", err)
	}
}

func TestUnknownEndpoint(t *testing.T) {
	f := setup(t)
	err := f.client(adminTok).doJSON(context.Background(), "GET", "/api/v1/nope", nil, nil)
	if status(err) != 404 {
		t.Errorf("unknown endpoint: %v", err)
	}
	err = f.client(adminTok).doJSON(context.Background(), "GET", "/api/v1/events?limit=0", nil, nil)
	if status(err) != 400 || field(err) != "limit" {
		t.Errorf("bad limit: %v", err)
	}
}

func decodeBody(resp *http.Response, v any) error {
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}
