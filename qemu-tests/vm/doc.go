// Package vm boots real QEMU machines for Palisade's VM test tier: a VM
// builder (QEMU 7.2 q35 under TCG, -nodefaults, OVMF with a private copy of
// its variables, swtpm with an EK certificate from a test CA, virtio NIC and
// disks), a network namespace per test with a bridge and taps, a serial
// console with expect-style waits and a boot timeline, and teardown that
// leaves no process, namespace or tap behind.
//
// It is test support only (ARCHITECTURE §7): nothing in production imports
// it. Tests using it call Require, which skips them unless
// PALISADE_VM_TESTS=1 (make test sets it) and fails them when that is set
// but QEMU, swtpm or OVMF are missing.
//
// Modelled on u-root's vmtest (a qemu.Options builder, console expects,
// the command line printed on failure); the network and TPM parts are ours.
package vm
