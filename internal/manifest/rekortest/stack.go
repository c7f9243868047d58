package rekortest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/palisade-cc/palisade/internal/netns"
)

// BinEnv names the directory scripts/rekor.sh builds the stack into.
const BinEnv = "PALISADE_REKOR_BIN"

// StackBinaries are the files Stack needs in the BinEnv directory.
var StackBinaries = []string{"rekor-server", "trillian_log_server", "trillian_log_signer", "createtree",
	"mariadbd", "mariadb-install-db", "mariadb", "trillian-storage.sql"}

// Stack is a real Rekor (rekor-server v1.5.4 on Trillian v1.7.3 with MariaDB
// storage and MariaDB search index) running in its own network namespace
// with only loopback: rekor-server opens its metrics port on every
// interface, and the namespace keeps that, and every other port, off the
// host. The test talks to it through HTTP, whose connections are dialled
// inside the namespace.
type Stack struct {
	// URL is rekor-server's API, valid with HTTP.
	URL string
	// HTTP dials inside the namespace.
	HTTP *http.Client
	// LogKey is the log's public key (the test generated the private key,
	// so it is pinned, not learned from the log).
	LogKey crypto.PublicKey
	// TreeID is the Trillian tree createtree made.
	TreeID int64

	ns    string
	nsfd  int
	dir   string
	procs []*exec.Cmd
	logs  []string
}

// StartStack starts the stack from the binaries in $PALISADE_REKOR_BIN and
// stops it when t ends. Without the variable the test is skipped, naming
// the script; with it, any missing binary fails the test.
func StartStack(t *testing.T) *Stack {
	t.Helper()
	bin := os.Getenv(BinEnv)
	if bin == "" {
		t.Skipf("%s not set: build the Rekor stack with scripts/rekor.sh (cold: ~11 min on 2 cores) and run with %s=$(scripts/rekor.sh | tail -1)", BinEnv, BinEnv)
	}
	for _, b := range StackBinaries {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("%s=%s: %s missing (scripts/rekor.sh builds it): %v", BinEnv, bin, b, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatalf("%s is set but the Rekor stack needs root for its network namespace", BinEnv)
	}
	start := time.Now()
	s := &Stack{nsfd: -1}
	t.Cleanup(func() { s.stop(t) })
	// A short path: MariaDB's unix socket path must fit sockaddr_un.
	d, err := os.MkdirTemp("", "rekor")
	if err != nil {
		t.Fatal(err)
	}
	s.dir = d
	s.ns = "palisade-rekor-" + strconv.Itoa(os.Getpid()) + "-" + filepath.Base(d)[5:]
	if err := s.netns(); err != nil {
		t.Fatal(err)
	}
	if err := s.start(t, bin); err != nil {
		s.dumpLogs(t)
		t.Fatal(err)
	}
	t.Logf("rekor stack up in %s: %s, tree %d, namespace %s", time.Since(start).Round(10*time.Millisecond), s.URL, s.TreeID, s.ns)
	return s
}

func (s *Stack) netns() error {
	if out, err := exec.Command("ip", "netns", "add", s.ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", s.ns, err, out)
	}
	if out, err := exec.Command("ip", "-n", s.ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s link set lo up: %v: %s", s.ns, err, out)
	}
	fd, err := unix.Open("/run/netns/"+s.ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	s.nsfd = fd
	s.HTTP = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := s.Do(func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
		DisableKeepAlives: true,
	}}
	return nil
}

// Do runs fn on an OS thread switched into the stack's namespace; sockets
// fn opens live there. The thread goes back to the scheduler only once it
// is back in its own namespace, otherwise it dies with the goroutine.
func (s *Stack) Do(fn func() error) error { return netns.Do(s.nsfd, fn) }

// spawn starts a process inside the namespace (ip netns exec execs it, so
// the PID is the server's own) with its output in a log file.
func (s *Stack) spawn(name string, args ...string) (*exec.Cmd, error) {
	lp := filepath.Join(s.dir, filepath.Base(name)+".log")
	f, err := os.OpenFile(lp, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", s.ns, name}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s.procs = append(s.procs, cmd)
	s.logs = append(s.logs, lp)
	return cmd, nil
}

// run runs a command inside the namespace to completion.
func (s *Stack) run(stdin io.Reader, name string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", s.ns, name}, args...)...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (s *Stack) start(t *testing.T, bin string) error {
	b := func(n string) string { return filepath.Join(bin, n) }
	data, sock := filepath.Join(s.dir, "db"), filepath.Join(s.dir, "my.sock")
	// MariaDB from Debian, on its own datadir; the test runs as root, which
	// mariadbd refuses without --user=root.
	if out, err := exec.Command(b("mariadb-install-db"), "--no-defaults", "--basedir=/usr", "--datadir="+data,
		"--user=root", "--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput(); err != nil {
		return fmt.Errorf("mariadb-install-db: %v: %s", err, out)
	}
	if _, err := s.spawn(b("mariadbd"), "--no-defaults", "--datadir="+data, "--socket="+sock,
		"--bind-address=127.0.0.1", "--port=3306", "--user=root", "--skip-grant-tables", "--skip-name-resolve",
		"--skip-log-bin", "--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=64M",
		"--pid-file="+filepath.Join(s.dir, "mariadb.pid")); err != nil {
		return err
	}
	sql := func(stdin io.Reader, args ...string) error {
		_, err := s.run(stdin, b("mariadb"), append([]string{"--no-defaults", "--socket=" + sock, "-uroot"}, args...)...)
		return err
	}
	if err := poll(30*time.Second, func() error { return sql(nil, "-e", "SELECT 1") }); err != nil {
		return fmt.Errorf("mariadb did not come up: %w", err)
	}
	if err := sql(nil, "-e", "CREATE DATABASE trillian; CREATE DATABASE rekor;"); err != nil {
		return err
	}
	schema, err := os.ReadFile(b("trillian-storage.sql"))
	if err != nil {
		return err
	}
	if err := sql(bytes.NewReader(schema), "trillian"); err != nil {
		return fmt.Errorf("load trillian-storage.sql: %w", err)
	}
	const dsn = "root@tcp(127.0.0.1:3306)/"
	common := []string{"--storage_system=mysql", "--mysql_uri=" + dsn + "trillian", "--quota_system=noop", "--logtostderr"}
	if _, err := s.spawn(b("trillian_log_server"), append([]string{"--rpc_endpoint=127.0.0.1:8090", "--http_endpoint=127.0.0.1:8091"}, common...)...); err != nil {
		return err
	}
	if _, err := s.spawn(b("trillian_log_signer"), append([]string{"--rpc_endpoint=127.0.0.1:8190", "--http_endpoint=127.0.0.1:8191",
		"--force_master", "--sequencer_interval=50ms", "--batch_size=100"}, common...)...); err != nil {
		return err
	}
	var out string
	if err := poll(30*time.Second, func() error {
		var err error
		out, err = s.run(nil, b("createtree"), "--admin_server=127.0.0.1:8090", "--logtostderr")
		return err
	}); err != nil {
		return fmt.Errorf("createtree: %w", err)
	}
	// createtree prints the tree ID as the last line of its output.
	lines := strings.Fields(strings.TrimSpace(out))
	if len(lines) == 0 {
		return fmt.Errorf("createtree printed nothing")
	}
	if s.TreeID, err = strconv.ParseInt(lines[len(lines)-1], 10, 64); err != nil {
		return fmt.Errorf("createtree output %q: %w", out, err)
	}
	// The log's signing key: made here, so the test pins what it made.
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	keyFile := filepath.Join(s.dir, "rekor-key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	s.LogKey = k.Public()
	if _, err := s.spawn(b("rekor-server"), "serve",
		"--rekor_server.address=127.0.0.1", "--port=3000",
		"--trillian_log_server.address=127.0.0.1", "--trillian_log_server.port=8090",
		"--trillian_log_server.tlog_id="+strconv.FormatInt(s.TreeID, 10),
		"--rekor_server.signer="+keyFile,
		"--search_index.storage_provider=mysql", "--search_index.mysql.dsn="+dsn+"rekor",
		"--enable_retrieve_api=true"); err != nil {
		return err
	}
	s.URL = "http://127.0.0.1:3000"
	want := PublicKeyPEM(s.LogKey)
	return poll(60*time.Second, func() error {
		r, err := s.HTTP.Get(s.URL + "/api/v1/log/publicKey")
		if err != nil {
			return err
		}
		defer r.Body.Close()
		got, _ := io.ReadAll(r.Body)
		if r.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /api/v1/log/publicKey: %s", r.Status)
		}
		if !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(want)) {
			return fmt.Errorf("rekor-server serves another key than the one it was given:\n%s", got)
		}
		return nil
	})
}

// Procs are the PIDs of the stack's servers.
func (s *Stack) Procs() []int {
	var p []int
	for _, c := range s.procs {
		p = append(p, c.Process.Pid)
	}
	return p
}

// stop ends every server by PID: SIGTERM, a bounded wait (Trillian's
// servers do not always exit on SIGTERM), then SIGKILL; then the namespace
// and the directory go.
func (s *Stack) stop(t *testing.T) {
	if t.Failed() {
		s.dumpLogs(t)
	}
	for i := len(s.procs) - 1; i >= 0; i-- {
		c := s.procs[i]
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		c.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			c.Process.Kill()
			<-done
		}
	}
	if s.nsfd >= 0 {
		unix.Close(s.nsfd)
		exec.Command("ip", "netns", "del", s.ns).Run()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

func (s *Stack) dumpLogs(t *testing.T) {
	for _, l := range s.logs {
		b, _ := os.ReadFile(l)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("--- %s (tail)\n%s", filepath.Base(l), b)
	}
}

func poll(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// LogID is the log ID Rekor derives from a key (hex SHA-256 of its PKIX DER).
func LogID(k crypto.PublicKey) string {
	id, _ := keyID(k)
	return id
}
