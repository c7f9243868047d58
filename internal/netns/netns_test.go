package netns

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
)

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// TestDo: fn runs in the namespace, and the caller's thread never leaves
// its own.
func TestDo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ip netns add)")
	}
	name := "pnt" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	fd, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = closeFD(fd) }()
	host := inode(t, "/proc/self/ns/net")
	var inside uint64
	if err := Do(fd, func() error { inside = inode(t, "/proc/thread-self/ns/net"); return nil }); err != nil {
		t.Fatal(err)
	}
	if inside == host || inside != inode(t, "/run/netns/"+name) {
		t.Errorf("fn ran in namespace %d, want %s's (%d), not the host's %d", inside, name, inode(t, "/run/netns/"+name), host)
	}
	if got := inode(t, "/proc/thread-self/ns/net"); got != host {
		t.Errorf("caller's thread in namespace %d after Do, want %d", got, host)
	}
	if _, err := Open("no-such-" + name); err == nil {
		t.Error("Open of a missing namespace succeeded")
	}
}

func closeFD(fd int) error { return os.NewFile(uintptr(fd), "ns").Close() }
