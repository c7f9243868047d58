// Package httpboot serves boot images read-only over HTTP, for UEFI HTTP
// boot and plain image downloads. It is not a general web server: GET and
// HEAD of regular files beneath one root, nothing else.
//
// Files are sent with http.ServeContent on the *os.File itself, so Range
// (single and multipart, RFC 9110 §14), If-Range, If-None-Match,
// If-Modified-Since and HEAD follow net/http, and a whole-file or
// single-range body goes out with sendfile(2) on Linux: the response writer
// wrapper below keeps io.ReaderFrom so net/http can hand the file to the
// kernel (see TestSendfile).
package httpboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Observer receives one Event per finished request. It is defined here, by
// its consumer; the inventory implements it. Transfer is called on the
// request's goroutine and must not block long.
type Observer interface {
	Transfer(ev Event)
}

// Event describes one finished HTTP request for a file.
type Event struct {
	Remote   netip.AddrPort
	File     string
	Bytes    int64 // body bytes written
	Started  time.Time
	Duration time.Duration
	Err      error  // nil for 2xx and 304 responses fully written
	Protocol string // always "http"
}

// Config is the HTTP boot server's part of the provisioner's configuration.
type Config struct {
	// Listen is host:port. Default "127.0.0.1:8080".
	Listen string `json:"listen,omitempty"`
	// Root is the images directory, served read-only. Required.
	Root string `json:"root"`
}

// Validate reports the first invalid field by its JSON name.
func (c Config) Validate() error {
	if c.Root == "" {
		return errors.New("http.root: required")
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return fmt.Errorf("http.listen: %q is not host:port: %w", c.Listen, err)
		}
	}
	return nil
}

// Request results, the values of the "result" label.
const (
	resultOK          = "ok"
	resultNotModified = "not_modified"
	resultRefused     = "refused"
	resultNotFound    = "not_found"
	resultBadRange    = "bad_range"
	resultError       = "error"
)

type metrics struct {
	bytes     prometheus.Counter
	transfers *prometheus.CounterVec
	active    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "provisioner_http_bytes_total", Help: "Body bytes written by the HTTP boot server.",
		}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provisioner_http_transfers_total", Help: "Finished HTTP boot requests by result.",
		}, []string{"result"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "provisioner_http_active_transfers", Help: "HTTP boot requests in progress.",
		}),
	}
	for _, r := range []string{resultOK, resultNotModified, resultRefused, resultNotFound, resultBadRange, resultError} {
		m.transfers.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.bytes, m.transfers, m.active} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Handler is the http.Handler over the images directory. It serves the
// request path relative to the root; mount it with http.StripPrefix to
// serve under a prefix.
type Handler struct {
	root *os.Root
	log  *slog.Logger
	obs  Observer
	m    *metrics
	// Now is the clock for events; tests may replace it.
	Now func() time.Time
}

// NewHandler opens cfg.Root. log, obs and reg may be nil.
func NewHandler(cfg Config, log *slog.Logger, obs Observer, reg prometheus.Registerer) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("httpboot: register metrics: %w", err)
	}
	root, err := os.OpenRoot(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("http.root: %w", err)
	}
	return &Handler{root: root, log: log, obs: obs, m: m, Now: time.Now}, nil
}

// Close releases the root directory.
func (h *Handler) Close() error { return h.root.Close() }

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	started := h.Now()
	cw := &countingWriter{ResponseWriter: w}
	name := strings.TrimPrefix(r.URL.Path, "/")
	// The request stops counting as active before anyone hears it finished,
	// so observers and metrics agree.
	h.m.active.Inc()
	result, err := func() (string, error) {
		defer h.m.active.Dec()
		return h.serve(cw, r, name)
	}()
	if err == nil && cw.err != nil {
		result, err = resultError, fmt.Errorf("file %q: write response: %w", name, cw.err)
	}
	h.m.transfers.WithLabelValues(result).Inc()
	h.m.bytes.Add(float64(cw.n.Load()))
	remote, _ := netip.ParseAddrPort(r.RemoteAddr)
	ev := Event{
		Remote: remote, File: name, Bytes: cw.n.Load(), Started: started,
		Duration: h.Now().Sub(started), Err: err, Protocol: "http",
	}
	if err != nil {
		h.log.Info("http: request failed", "remote", r.RemoteAddr, "file", name, "result", result, "err", err)
	} else {
		h.log.Debug("http: served", "remote", r.RemoteAddr, "file", name, "bytes", ev.Bytes, "duration", ev.Duration)
	}
	if h.obs != nil {
		h.obs.Transfer(ev)
	}
}

func (h *Handler) serve(w *countingWriter, r *http.Request, name string) (string, error) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return resultRefused, fmt.Errorf("file %q: method %s not allowed", name, r.Method)
	}
	if err := checkName(name); err != nil {
		http.Error(w, "forbidden", http.StatusForbidden)
		return resultRefused, err
	}
	f, err := h.root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			http.Error(w, "not found", http.StatusNotFound)
			return resultNotFound, fmt.Errorf("file %q: %w", name, err)
		}
		http.Error(w, "forbidden", http.StatusForbidden)
		return resultRefused, fmt.Errorf("file %q: %w", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.Error(w, "forbidden", http.StatusForbidden)
		return resultRefused, fmt.Errorf("file %q: not a regular file", name)
	}
	hd := w.Header()
	hd.Set("ETag", etag(fi))
	hd.Set("Content-Type", contentType(name))
	// ServeContent answers conditionals, ranges and HEAD, and copies the body
	// with io.CopyN, which reaches (*net.TCPConn).ReadFrom → sendfile.
	http.ServeContent(w, r, name, fi.ModTime(), f)
	switch s := w.status(); {
	case s == http.StatusNotModified:
		return resultNotModified, nil
	case s == http.StatusRequestedRangeNotSatisfiable:
		return resultBadRange, fmt.Errorf("file %q: range %q not satisfiable", name, r.Header.Get("Range"))
	case s >= 400:
		return resultError, fmt.Errorf("file %q: status %d", name, s)
	}
	return resultOK, nil
}

// etag is a strong validator (RFC 9110 §8.8.3) from inode, size and
// modification time: a file replaced in place (new inode or mtime) gets a
// new tag without hashing gigabytes of image on every request.
func etag(fi os.FileInfo) string {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return `"` + strconv.FormatUint(ino, 16) + "-" + strconv.FormatInt(fi.Size(), 16) + "-" + strconv.FormatInt(fi.ModTime().UnixNano(), 16) + `"`
}

// contentType names EFI binaries as UEFI HTTP boot expects
// (UEFI 2.10 §24.7.2.1: application/efi); anything else by extension, and
// never sniffed, so an uploaded image is not served as HTML.
func contentType(name string) string {
	ext := strings.ToLower(path.Ext(name))
	switch ext {
	case ".efi":
		return "application/efi"
	case ".img", ".iso", ".raw", ".qcow2", ".uki":
		return "application/octet-stream"
	}
	if t := mime.TypeByExtension(ext); t != "" && !strings.HasPrefix(t, "text/html") {
		return t
	}
	return "application/octet-stream"
}

// checkName refuses names that could leave the root or that no boot client
// sends; os.Root then refuses symlinks that leave the root.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty file name")
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("file %q: NUL byte in name", name)
	case strings.ContainsRune(name, '\\'):
		return fmt.Errorf("file %q: backslash in name", name)
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("file %q: absolute path", name)
	}
	for _, c := range name {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("file %q: control character in name", name)
		}
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return fmt.Errorf("file %q: \"..\" in path", name)
		}
	}
	return nil
}

// countingWriter counts body bytes and remembers the status. It implements
// io.ReaderFrom by delegating, so the sendfile path of net/http stays open.
type countingWriter struct {
	http.ResponseWriter
	n    atomic.Int64
	code int
	err  error
}

func (c *countingWriter) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

func (c *countingWriter) ReadFrom(src io.Reader) (int64, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	rf, ok := c.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{c}, src)
	}
	n, err := rf.ReadFrom(src)
	c.n.Add(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (c *countingWriter) status() int {
	if c.code == 0 {
		return http.StatusOK
	}
	return c.code
}

// Server is the HTTP boot listener around a Handler.
type Server struct {
	h     *Handler
	ln    net.Listener
	srv   *http.Server
	exact map[string]http.Handler
}

// New validates cfg, opens the root and binds the listener.
func New(cfg Config, log *slog.Logger, obs Observer, reg prometheus.Registerer) (*Server, error) {
	h, err := NewHandler(cfg, log, obs, reg)
	if err != nil {
		return nil, err
	}
	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:8080"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("http.listen: %w", err)
	}
	s := &Server{h: h, ln: ln, exact: map[string]http.Handler{}}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.route),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// HandleExact serves requests for exactly path (e.g. "/node/v1/status")
// with hx instead of the file handler. Image names have no "/", so such a
// path never hides an image. Call it before Serve.
func (s *Server) HandleExact(path string, hx http.Handler) { s.exact[path] = hx }

// route matches the path exactly, without a ServeMux: the file handler
// keeps seeing every other path as sent (its own checks refuse "..").
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	if hx, ok := s.exact[r.URL.Path]; ok {
		hx.ServeHTTP(w, r)
		return
	}
	s.h.ServeHTTP(w, r)
}

// Addr is the bound address.
func (s *Server) Addr() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }

// Handler returns the handler, e.g. to mount it in another mux as well.
func (s *Server) Handler() *Handler { return s.h }

// Serve serves until ctx is done, then lets running downloads finish for up
// to 5 s, closes everything and returns nil.
func (s *Server) Serve(ctx context.Context) error {
	defer s.h.Close()
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("httpboot: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.srv.Close()
	}
	<-errc
	return nil
}
