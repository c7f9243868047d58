// Package etcdtest starts a real, single-member etcd server on loopback for
// tests: random free ports, a temporary data directory, stopped by PID.
//
// It is for tests only; it does not configure etcd for production.
package etcdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Binary finds the etcd server binary: $PALISADE_ETCD, then the repo's
// out/etcd (built with `go build -o out/etcd go.etcd.io/etcd/server/v3`),
// then /usr/bin/etcd (Debian's etcd-server package), then $PATH.
func Binary() (string, error) {
	if p := os.Getenv("PALISADE_ETCD"); p != "" {
		return p, nil
	}
	var candidates []string
	if _, file, _, ok := runtime.Caller(0); ok {
		// keyd/store/etcd/etcdtest/etcdtest.go → repository root.
		root := filepath.Join(filepath.Dir(file), "..", "..", "..", "..")
		candidates = append(candidates, filepath.Join(root, "out", "etcd"))
	}
	candidates = append(candidates, "/usr/bin/etcd")
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	return "", errors.New("no etcd server binary: apt-get install etcd-server, or go build -o out/etcd go.etcd.io/etcd/server/v3, or set PALISADE_ETCD")
}

// Server is a running etcd.
type Server struct {
	// Endpoints are the client URLs.
	Endpoints []string
	cmd       *exec.Cmd
	stderr    *bytes.Buffer
	exited    chan struct{}
	stopOnce  sync.Once
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start starts etcd with its data in dir and waits until it serves. The
// caller must Stop it. Ports are picked free just before the start, so a
// start can lose a race for them; Start retries a few times.
func Start(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 {
		s, err := start(bin, dir)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func start(bin, dir string) (*Server, error) {
	cport, err := freePort()
	if err != nil {
		return nil, err
	}
	pport, err := freePort()
	if err != nil {
		return nil, err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(cport)
	peer := "http://127.0.0.1:" + strconv.Itoa(pport)
	data := filepath.Join(dir, "etcd-"+strconv.Itoa(cport))
	cmd := exec.Command(bin,
		"--name", "test",
		"--data-dir", data,
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "test="+peer,
		"--initial-cluster-state", "new",
		"--log-level", "error",
	)
	// Debian's 3.4 refuses to start on some architectures without this;
	// harmless elsewhere.
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	s := &Server{Endpoints: []string{client}, cmd: cmd, stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	cmd.Stdout = s.stderr
	cmd.Stderr = s.stderr
	// If the test binary dies without stopping it, the kernel kills etcd.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		cmd.Wait()
		close(s.exited)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if healthy(ctx, client) {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("etcd exited during start: %s", s.stderr.String())
		case <-ctx.Done():
			s.Stop()
			return nil, fmt.Errorf("etcd not healthy within 30 s: %s", s.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func healthy(ctx context.Context, client string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, client+"/health", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	return resp.StatusCode == http.StatusOK && bytes.Contains(body.Bytes(), []byte(`"health":"true"`))
}

// Stop kills etcd by its PID and waits for it to exit.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd.Process != nil {
			s.cmd.Process.Kill()
		}
		<-s.exited
	})
}
