package provisioner

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// imageServer serves the images directory over HTTP (UEFI HTTP boot and
// plain downloads) until provisioner/httpboot takes over: GET and HEAD of
// /<name>, Range and conditional requests by http.ServeContent, files
// opened through os.Root so nothing outside the directory is reachable.
type imageServer struct {
	root  *os.Root
	inv   *inventory.Store
	log   *slog.Logger
	bytes prometheus.Counter
	reqs  *prometheus.CounterVec
}

func newImageServer(dir string, inv *inventory.Store, reg prometheus.Registerer, log *slog.Logger) (*imageServer, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("http: images_dir: %w", err)
	}
	s := &imageServer{
		root: root, inv: inv, log: log,
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "provisioner_http_bytes_total", Help: "Image bytes sent over HTTP."}),
		reqs:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "provisioner_http_requests_total", Help: "HTTP image requests by status code."}, []string{"code"}),
	}
	if reg != nil {
		if err := reg.Register(s.bytes); err != nil {
			return nil, err
		}
		if err := reg.Register(s.reqs); err != nil {
			return nil, err
		}
	}
	return s, nil
}

type countingWriter struct {
	http.ResponseWriter
	n      int64
	status int
}

func (w *countingWriter) WriteHeader(code int) { w.status = code; w.ResponseWriter.WriteHeader(code) }
func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (s *imageServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	cw := &countingWriter{ResponseWriter: w}
	name := strings.TrimPrefix(r.URL.Path, "/")
	err := s.serve(cw, r, name)
	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	s.reqs.WithLabelValues(fmt.Sprint(cw.status)).Inc()
	s.bytes.Add(float64(cw.n))
	if r.Method != http.MethodGet {
		return
	}
	remote, _ := netip.ParseAddrPort(r.RemoteAddr)
	if err == nil && cw.status >= 400 {
		err = fmt.Errorf("HTTP %d", cw.status)
	}
	if rerr := s.inv.RecordTransfer(inventory.Transfer{
		Remote: remote.Addr(), File: name, Bytes: cw.n, Started: start,
		Duration: time.Since(start), Err: err, Protocol: "http",
	}); rerr != nil {
		s.log.Warn("inventory: HTTP transfer not recorded", "file", name, "err", rerr)
	}
}

func (s *imageServer) serve(w http.ResponseWriter, r *http.Request, name string) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return nil
	}
	if !inventory.ValidName(name) {
		http.Error(w, "not found", http.StatusNotFound)
		return nil
	}
	f, err := s.root.Open(name)
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.Error(w, "not found", http.StatusNotFound)
		return nil
	}
	w.Header().Set("ETag", fmt.Sprintf(`"%x-%x"`, st.Size(), st.ModTime().UnixNano()))
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, name, st.ModTime(), f)
	return r.Context().Err()
}

// ReadFrom keeps the zero-copy path: http.ServeContent copies with
// io.Copy, which uses the underlying writer's ReaderFrom (sendfile on TCP).
func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := io.Copy(w.ResponseWriter, r)
	w.n += n
	return n, err
}
