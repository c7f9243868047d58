// Package netns runs code inside a Linux network namespace: the tests,
// benchmarks and the QEMU harness that build their own namespaces (ip netns
// add, veth, bridges) open sockets and devices in them through it. No
// production component uses it.
package netns

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Open opens the namespace ip netns add created as name, for Do; the
// caller closes the descriptor.
func Open(name string) (int, error) {
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("namespace %s: %w", name, err)
	}
	return fd, nil
}

// Do runs fn on an OS thread switched into the network namespace nsfd.
// Sockets, TUN devices and netlink sockets fn creates belong to that
// namespace for their lifetime. The thread goes back to the scheduler only
// once it is back in its own namespace; otherwise it stays locked and dies
// with its goroutine, so no other goroutine ever runs in the wrong
// namespace.
func Do(nsfd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // still in its own namespace
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
