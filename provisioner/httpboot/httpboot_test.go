package httpboot

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) Transfer(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

type testServer struct {
	*Server
	root string
	obs  *recorder
	base string
}

func startServer(t *testing.T, root string) *testServer {
	t.Helper()
	if root == "" {
		root = t.TempDir()
	}
	obs := &recorder{}
	s, err := New(Config{Root: root, Listen: "127.0.0.1:0"}, nil, obs, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{Server: s, root: root, obs: obs, base: "http://" + s.Addr().String()}
}

func writeFile(t *testing.T, dir, name string, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func do(t *testing.T, method, url string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestGetAndHead(t *testing.T) {
	ts := startServer(t, "")
	want := writeFile(t, ts.root, "boot/uki.efi", 100_000)
	writeFile(t, ts.root, "img/disk.img", 10)
	resp, body := do(t, "GET", ts.base+"/boot/uki.efi", nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("GET: status %d, %d bytes", resp.StatusCode, len(body))
	}
	got := map[string]string{
		"Content-Type":   resp.Header.Get("Content-Type"),
		"Content-Length": resp.Header.Get("Content-Length"),
		"Accept-Ranges":  resp.Header.Get("Accept-Ranges"),
	}
	wantHdr := map[string]string{"Content-Type": "application/efi", "Content-Length": "100000", "Accept-Ranges": "bytes"}
	if diff := cmp.Diff(wantHdr, got); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
	etag := resp.Header.Get("ETag")
	if !strings.HasPrefix(etag, `"`) || strings.HasPrefix(etag, "W/") {
		t.Errorf("ETag %q is not a strong validator", etag)
	}
	if resp.Header.Get("Last-Modified") == "" {
		t.Error("no Last-Modified")
	}
	head, hbody := do(t, "HEAD", ts.base+"/boot/uki.efi", nil)
	if head.StatusCode != 200 || len(hbody) != 0 || head.Header.Get("Content-Length") != "100000" || head.Header.Get("ETag") != etag {
		t.Errorf("HEAD: status %d, body %d bytes, length %q, etag %q", head.StatusCode, len(hbody), head.Header.Get("Content-Length"), head.Header.Get("ETag"))
	}
	if r, _ := do(t, "GET", ts.base+"/img/disk.img", nil); r.Header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("disk.img Content-Type = %q", r.Header.Get("Content-Type"))
	}
}

func TestRanges(t *testing.T) {
	ts := startServer(t, "")
	want := writeFile(t, ts.root, "f.efi", 10_000)
	t.Run("single", func(t *testing.T) {
		resp, body := do(t, "GET", ts.base+"/f.efi", map[string]string{"Range": "bytes=100-199"})
		if resp.StatusCode != 206 || !bytes.Equal(body, want[100:200]) {
			t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
		}
		if got := resp.Header.Get("Content-Range"); got != "bytes 100-199/10000" {
			t.Errorf("Content-Range = %q", got)
		}
	})
	t.Run("suffix", func(t *testing.T) {
		resp, body := do(t, "GET", ts.base+"/f.efi", map[string]string{"Range": "bytes=-10"})
		if resp.StatusCode != 206 || !bytes.Equal(body, want[len(want)-10:]) {
			t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
		}
	})
	t.Run("multi", func(t *testing.T) {
		resp, body := do(t, "GET", ts.base+"/f.efi", map[string]string{"Range": "bytes=0-9,5000-5009"})
		mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if resp.StatusCode != 206 || err != nil || mt != "multipart/byteranges" {
			t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		var parts [][]byte
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(p)
			parts = append(parts, b)
			if p.Header.Get("Content-Type") != "application/efi" {
				t.Errorf("part Content-Type = %q", p.Header.Get("Content-Type"))
			}
		}
		if diff := cmp.Diff([][]byte{want[0:10], want[5000:5010]}, parts); diff != "" {
			t.Errorf("parts (-want +got):\n%s", diff)
		}
	})
	t.Run("unsatisfiable", func(t *testing.T) {
		resp, _ := do(t, "GET", ts.base+"/f.efi", map[string]string{"Range": "bytes=20000-"})
		if resp.StatusCode != 416 {
			t.Fatalf("status %d, want 416", resp.StatusCode)
		}
	})
}

func TestConditionals(t *testing.T) {
	ts := startServer(t, "")
	want := writeFile(t, ts.root, "f.efi", 1000)
	resp, _ := do(t, "GET", ts.base+"/f.efi", nil)
	etag, lm := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	for _, tc := range []struct {
		name   string
		hdr    map[string]string
		status int
		body   []byte
	}{
		{"If-None-Match match", map[string]string{"If-None-Match": etag}, 304, nil},
		{"If-None-Match other", map[string]string{"If-None-Match": `"x"`}, 200, want},
		{"If-Modified-Since", map[string]string{"If-Modified-Since": lm}, 304, nil},
		{"If-Range match", map[string]string{"Range": "bytes=0-9", "If-Range": etag}, 206, want[:10]},
		{"If-Range stale", map[string]string{"Range": "bytes=0-9", "If-Range": `"stale"`}, 200, want},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, "GET", ts.base+"/f.efi", tc.hdr)
			if resp.StatusCode != tc.status || !bytes.Equal(body, tc.body) {
				t.Fatalf("status %d (%d bytes), want %d (%d bytes)", resp.StatusCode, len(body), tc.status, len(tc.body))
			}
		})
	}
	// Replacing the file changes the validator.
	later := time.Now().Add(time.Hour)
	writeFile(t, ts.root, "f.efi", 1000)
	os.Chtimes(filepath.Join(ts.root, "f.efi"), later, later)
	if resp, _ := do(t, "GET", ts.base+"/f.efi", map[string]string{"If-None-Match": etag}); resp.StatusCode != 200 || resp.Header.Get("ETag") == etag {
		t.Errorf("after replace: status %d, etag %q (old %q)", resp.StatusCode, resp.Header.Get("ETag"), etag)
	}
}

// rawGet sends a request line as written, bypassing any client-side
// path cleaning, and returns the status code.
func rawGet(t *testing.T, addr, method, target string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", method, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestPathEscapeRefused(t *testing.T) {
	outside := t.TempDir()
	writeFile(t, outside, "secret", 10)
	ts := startServer(t, "")
	writeFile(t, ts.root, "sub/ok", 10)
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(ts.root, "abs-link"))
	os.Symlink("../"+filepath.Base(outside)+"/secret", filepath.Join(ts.root, "rel-link"))
	os.Symlink("sub/ok", filepath.Join(ts.root, "in-link"))
	up := "/../" + filepath.Base(outside) + "/secret"
	for _, tc := range []struct {
		method, target string
		status         int
	}{
		{"GET", up, 403},
		{"GET", "/sub/../.." + up, 403},
		{"GET", "/%2e%2e/" + filepath.Base(outside) + "/secret", 403},
		{"GET", "/..%2f" + filepath.Base(outside) + "%2fsecret", 403},
		{"GET", "//" + strings.TrimPrefix(filepath.Join(outside, "secret"), "/"), 403}, // absolute
		{"GET", "/sub%5cok", 403},  // backslash
		{"GET", "/sub/ok%00", 403}, // NUL
		{"GET", "/sub/ok%0a", 403}, // control character
		{"GET", "/abs-link", 403},  // symlink out, absolute
		{"GET", "/rel-link", 403},  // symlink out, relative
		{"GET", "/sub", 403},       // directory
		{"GET", "/", 403},          // no listing
		{"GET", "/missing", 404},   //
		{"POST", "/sub/ok", 405},   // read-only
		{"PUT", "/sub/new", 405},   //
		{"DELETE", "/sub/ok", 405}, //
		{"GET", "/in-link", 200},   // symlink inside the root
		{"GET", "/sub/./ok", 200},  //
		{"GET", "/sub//ok", 200},   //
		{"HEAD", "/sub/ok", 200},   //
	} {
		if got := rawGet(t, ts.Addr().String(), tc.method, tc.target); got != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.target, got, tc.status)
		}
	}
	if _, err := os.Stat(filepath.Join(ts.root, "sub/new")); err == nil {
		t.Error("PUT created a file")
	}
}

func TestObserverAndMetrics(t *testing.T) {
	ts := startServer(t, "")
	want := writeFile(t, ts.root, "f.efi", 5000)
	do(t, "GET", ts.base+"/f.efi", nil)
	do(t, "GET", ts.base+"/f.efi", map[string]string{"Range": "bytes=0-99"})
	do(t, "GET", ts.base+"/nope", nil)
	ev := ts.obs.all()
	if len(ev) != 3 {
		t.Fatalf("got %d events, want 3", len(ev))
	}
	type brief struct {
		File  string
		Bytes int64
		Err   bool
		Proto string
	}
	var got []brief
	for _, e := range ev {
		got = append(got, brief{e.File, e.Bytes, e.Err != nil, e.Protocol})
		if !e.Remote.Addr().IsLoopback() || e.Started.IsZero() {
			t.Errorf("event %+v: remote or start missing", e)
		}
	}
	wantEv := []brief{{"f.efi", int64(len(want)), false, "http"}, {"f.efi", 100, false, "http"}, {"nope", ev[2].Bytes, true, "http"}}
	if diff := cmp.Diff(wantEv, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	h := ts.Handler()
	if got := testutil.ToFloat64(h.m.transfers.WithLabelValues(resultOK)); got != 2 {
		t.Errorf("ok transfers = %v", got)
	}
	if got := testutil.ToFloat64(h.m.transfers.WithLabelValues(resultNotFound)); got != 1 {
		t.Errorf("not_found transfers = %v", got)
	}
	if got := testutil.ToFloat64(h.m.bytes); got < 5100 {
		t.Errorf("bytes = %v, want >= 5100", got)
	}
	if got := testutil.ToFloat64(h.m.active); got != 0 {
		t.Errorf("active = %v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Root: "/x"}, ""},
		{Config{}, "http.root"},
		{Config{Root: "/x", Listen: "bad"}, "http.listen"},
	} {
		err := tc.cfg.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Validate(%+v) = %v, want error naming %q", tc.cfg, err, tc.want)
		}
	}
}

// TestSendfile proves the zero-copy path: the server runs in a child
// process under strace, and a whole-file GET and a single-range GET must
// each be written with sendfile(2).
func TestSendfile(t *testing.T) {
	if os.Getenv("HTTPBOOT_SENDFILE_CHILD") != "" {
		sendfileChild()
		return
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed (Debian package strace); cannot observe sendfile")
	}
	dir := t.TempDir()
	want := writeFile(t, dir, "big.efi", 4<<20)
	trace := filepath.Join(dir, "trace")
	cmd := exec.Command(strace, "-f", "-qq", "-e", "trace=sendfile", "-o", trace, os.Args[0], "-test.run=^TestSendfile$")
	cmd.Env = append(os.Environ(), "HTTPBOOT_SENDFILE_CHILD="+dir)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot run strace (ptrace not permitted?): %v", err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child did not report its address: %v", err)
	}
	base := "http://" + strings.TrimSpace(line)
	resp, body := do(t, "GET", base+"/big.efi", nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("GET: status %d, %d bytes", resp.StatusCode, len(body))
	}
	resp, body = do(t, "GET", base+"/big.efi", map[string]string{"Range": "bytes=1000-2000999"})
	if resp.StatusCode != 206 || !bytes.Equal(body, want[1000:2001000]) {
		t.Fatalf("range GET: status %d, %d bytes", resp.StatusCode, len(body))
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	out, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, l := range strings.Split(string(out), "\n") {
		if i := strings.LastIndex(l, "="); strings.Contains(l, "sendfile(") && i >= 0 {
			var n int64
			fmt.Sscan(l[i+1:], &n)
			if n > 0 {
				total += n
			}
		}
	}
	// net/http writes the first 512 bytes of each body itself (they pass
	// through its header-sniffing buffer); all the rest must be sendfile.
	if want := int64(len(want) + 2_000_000 - 2*512); total < want {
		t.Fatalf("sendfile wrote %d bytes, want >= %d (body bytes of both responses); trace:\n%s", total, want, out)
	}
}

func sendfileChild() {
	s, err := New(Config{Root: os.Getenv("HTTPBOOT_SENDFILE_CHILD"), Listen: "127.0.0.1:0"}, nil, nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	fmt.Println(s.Addr())
	if err := s.Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}
