// Package qemutests boots Palisade for real in QEMU: measured TPM boots over
// TFTP and UEFI HTTP boot from the provisioner, and emulated SEV-SNP and TDX
// guests, each judged by keyd against the signed manifest of the image the
// real build produced. The tests run only with PALISADE_VM_TESTS=1 (make
// test sets it); see qemu-tests/vm for the harness.
package qemutests

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

// TestMain fails the run if a test left a QEMU or swtpm process or a
// network namespace behind (taps live in the namespaces). Interrupted
// (Ctrl-C in `make demo`, SIGTERM), it tears everything down itself,
// since the tests' cleanups never run then.
func TestMain(m *testing.M) {
	if os.Getenv(vm.EnvVMTests) == "1" {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			s := <-sig
			fmt.Fprintf(os.Stderr, "qemu-tests: %v: tearing down\n", s)
			for _, r := range vm.Abort() {
				fmt.Fprintf(os.Stderr, "qemu-tests: removed %s\n", r)
			}
			os.Exit(130)
		}()
	}
	code := m.Run()
	if os.Getenv(vm.EnvVMTests) == "1" {
		if left := vm.LeftOvers(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: left behind after the suite: %v\n", left)
			code = 1
		} else {
			fmt.Println("qemu-tests: no QEMU or swtpm process, namespace or tap left behind")
		}
	}
	os.Exit(code)
}
