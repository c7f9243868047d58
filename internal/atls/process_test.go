package atls

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
)

const childEnv = "PALISADE_ATLS_CHILD"

// TestTwoProcesses runs the server in a re-executed child process with the
// same Config shape, as a real keyd would, and handshakes with it.
func TestTwoProcesses(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=1", seedEnv+"="+hex.EncodeToString(testKeys().Seed()))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewReader(out)
	var addr string
	for addr == "" {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("child printed no address: %v", err)
		}
		addr, _ = strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	}
	p := newPair()
	c, err := Dial(context.Background(), "tcp", addr, p.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v := c.PeerVerified(); v == nil || c.PeerClaims().NodeID != "keyd-child" {
		t.Fatalf("child server: verified %v, claims %+v", v, c.PeerClaims())
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello node-1" {
		t.Errorf("child said %q, %v", got, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("child: %v", err)
	}
}

// TestMain turns the re-executed test binary into the child server.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		if err := childServer(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childServer is the child's side of TestTwoProcesses: one keyd-shaped
// server, built from the same Config shape, serving one attested client.
func childServer() error {
	cfg := testConfig(attest.RoleKeyd, "keyd-child", newAttester())
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ln, err := NewListener(inner, cfg, ListenerOptions{})
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Printf("ADDR %s\n", ln.Addr())
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = fmt.Fprintf(c, "hello %s", c.(*Conn).PeerClaims().NodeID)
	return err
}
