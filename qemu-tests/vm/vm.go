package vm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Paths of Debian's qemu-system-x86 and ovmf packages.
const (
	QEMU     = "qemu-system-x86_64"
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// EnvVMTests must be "1" for VM tests to run.
const EnvVMTests = "PALISADE_VM_TESTS"

// MaxVMs is how many VMs may run at once: QEMU under TCG uses a core each,
// and the machines the tier runs on have two.
const MaxVMs = 2

var slots = make(chan struct{}, MaxVMs)

// Require skips t unless PALISADE_VM_TESTS=1, and fails it when that is set
// but a tool the tier needs is missing (scripts/deps.sh vm installs them).
func Require(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvVMTests) != "1" {
		t.Skipf("VM test: set %s=1 (make test does)", EnvVMTests)
	}
	for _, tool := range []string{QEMU, "swtpm", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("vm: %s not found: run scripts/deps.sh vm", tool)
		}
	}
	for _, f := range []string{OVMFCode, OVMFVars} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("vm: %v: run scripts/deps.sh vm", err)
		}
	}
}

// Config describes one VM.
type Config struct {
	Name     string
	MemoryMB int // default 1024
	CPUs     int // default 1
	// Code and Vars are the OVMF flash images (defaults: Debian's 4 MiB
	// build with TPM measured boot). Vars is copied: each VM writes its own.
	Code, Vars string
	// TPM, if set, is started for the VM and attached as a TIS TPM.
	TPM *SWTPM
	// Net, if set, gets a tap for the VM's virtio NIC, which is the first
	// boot device; MAC defaults to 52:54:00:xx from the name.
	Net *Network
	MAC string
	// NIC is the NIC model: "" (virtio-net, OVMF's own driver, the boot
	// device) or NICE1000E (an Intel 82574L, as on physical servers). The
	// e1000e carries no option ROM: QEMU's is iPXE, which would boot the
	// node itself and so measure another boot path than a server's
	// firmware; firmware boots such a VM from ESP.
	NIC string
	// ESP, if set, is a directory the VM sees as a FAT disk (QEMU's vvfat,
	// read-only) and boots first: EFI/BOOT/BOOTX64.EFI in it.
	ESP string
	// Kernel, Initrd and Append boot a kernel directly (QEMU fw_cfg)
	// instead of the network.
	Kernel, Initrd, Append string
	// Disks are raw images attached as virtio disks, in order, or as NVMe
	// namespaces (one controller each) when DiskBus is DiskNVMe.
	Disks   []string
	DiskBus string
	// Extra are appended to the command line (e.g. the CVM emulator's
	// virtio-serial port).
	Extra []string
	// Timeout bounds the VM's whole life (default 3 minutes): a hung boot
	// cannot hang the tier.
	Timeout time.Duration
}

// Device models a VM can have besides virtio (Config.NIC, Config.DiskBus).
const (
	NICE1000E = "e1000e"
	DiskNVMe  = "nvme"
)

// VM is a running QEMU.
type VM struct {
	Name string
	// Args is the exact command line, printed on failure.
	Args    []string
	Console *Console
	// LogPath is the raw serial console.
	LogPath string
	Started time.Time

	cfg  Config
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
	t    testing.TB
}

// Start boots a VM; it waits for a free slot (MaxVMs) first. The VM is
// killed and its swtpm stopped when the test ends, whatever happened.
func Start(t testing.TB, c Config) *VM {
	t.Helper()
	if c.MemoryMB == 0 {
		c.MemoryMB = 1024
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.Code == "" {
		c.Code, c.Vars = OVMFCode, OVMFVars
	}
	if c.Timeout == 0 {
		c.Timeout = 3 * time.Minute
	}
	if c.Name == "" {
		c.Name = "vm"
	}
	dir := t.TempDir()
	vars := filepath.Join(dir, "vars.fd")
	if err := copyFile(c.Vars, vars); err != nil {
		t.Fatalf("vm %s: %v", c.Name, err)
	}
	args := []string{QEMU, "-nodefaults", "-no-user-config", "-machine", "q35", "-accel", "tcg",
		// RDRAND (TCG's max model has it) and a virtio RNG: without
		// entropy the guest's getrandom blocks and DHCP never starts.
		"-cpu", "max", "-device", "virtio-rng-pci",
		"-m", fmt.Sprint(c.MemoryMB), "-smp", fmt.Sprint(c.CPUs), "-display", "none", "-no-reboot",
		"-serial", "stdio",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + c.Code,
		"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
	}
	if c.TPM != nil {
		args = append(args, "-chardev", "socket,id=chrtpm,path="+c.TPM.Ctrl,
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
	}
	if c.Net != nil {
		if c.MAC == "" {
			c.MAC = macFor(c.Name)
		}
		tap := c.Net.Tap(t)
		args = append(args, "-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no")
		switch c.NIC {
		case "":
			// romfile= : OVMF's own virtio-net driver, not iPXE's ROM.
			args = append(args, "-device", "virtio-net-pci,netdev=n0,mac="+c.MAC+",romfile=,bootindex=1")
		case NICE1000E:
			args = append(args, "-device", "e1000e,netdev=n0,mac="+c.MAC+",romfile=")
		default:
			t.Fatalf("vm %s: NIC %q, want \"\" (virtio) or %q", c.Name, c.NIC, NICE1000E)
		}
	}
	if c.ESP != "" {
		args = append(args, "-drive", "if=none,id=esp,format=raw,readonly=on,file=fat:"+c.ESP,
			"-device", "virtio-blk-pci,drive=esp,bootindex=0")
	}
	if c.Kernel != "" {
		args = append(args, "-kernel", c.Kernel, "-initrd", c.Initrd, "-append", c.Append)
	}
	for i, d := range c.Disks {
		args = append(args, "-drive", fmt.Sprintf("if=none,id=d%d,format=raw,file=%s", i, d))
		switch c.DiskBus {
		case "":
			args = append(args, "-device", fmt.Sprintf("virtio-blk-pci,drive=d%d", i))
		case DiskNVMe:
			args = append(args, "-device", fmt.Sprintf("nvme,drive=d%d,serial=palisade%d", i, i))
		default:
			t.Fatalf("vm %s: disk bus %q, want \"\" (virtio) or %q", c.Name, c.DiskBus, DiskNVMe)
		}
	}
	args = append(args, c.Extra...)

	select {
	case slots <- struct{}{}:
	case <-time.After(10 * time.Minute):
		t.Fatalf("vm %s: no free VM slot in 10 minutes", c.Name)
	}
	v := &VM{Name: c.Name, Args: args, cfg: c, done: make(chan struct{}), t: t,
		LogPath: filepath.Join(dir, "console.log")}
	if c.TPM != nil {
		if err := c.TPM.start(); err != nil {
			<-slots
			t.Fatalf("vm %s: %v", c.Name, err)
		}
	}
	log, err := os.Create(v.LogPath)
	if err != nil {
		t.Fatalf("vm %s: %v", c.Name, err)
	}
	if c.Net != nil {
		v.cmd = c.Net.Command(args[0], args[1:]...)
	} else {
		v.cmd = exec.Command(args[0], args[1:]...)
	}
	// Its own process group, so a kill reaches QEMU behind ip netns exec.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("vm %s: %v", c.Name, err)
	}
	v.cmd.Stderr = log
	v.Console = newConsole()
	v.Started = time.Now()
	if err := v.cmd.Start(); err != nil {
		<-slots
		t.Fatalf("vm %s: start QEMU: %v\n%s", c.Name, err, v.CommandLine())
	}
	go v.Console.read(io.TeeReader(out, log), v.Started)
	go func() {
		v.err = v.cmd.Wait()
		log.Close()
		v.Console.close()
		close(v.done)
	}()
	go func() {
		select {
		case <-v.done:
		case <-time.After(c.Timeout):
			v.Console.note("vm: time-out after %s, killing", c.Timeout)
			v.kill()
		}
	}()
	t.Cleanup(v.Stop)
	return v
}

// CommandLine is the exact QEMU command, shell-quoted.
func (v *VM) CommandLine() string {
	q := make([]string, len(v.Args))
	for i, a := range v.Args {
		if strings.ContainsAny(a, " ,=\"'") && !strings.HasPrefix(a, "-") {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}

func (v *VM) kill() {
	if v.cmd.Process != nil {
		syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// Stop kills the VM (if it still runs), waits for it and stops its TPM.
// It is safe to call more than once.
func (v *VM) Stop() {
	v.once.Do(func() {
		v.kill()
		<-v.done
		if v.cfg.TPM != nil {
			v.cfg.TPM.stop()
		}
		<-slots
	})
}

// Done is closed when QEMU has exited.
func (v *VM) Done() <-chan struct{} { return v.done }

// Expect waits until a console line matches re and returns its submatches;
// on time-out or exit it fails the test with the command line and the
// console's tail.
func (v *VM) Expect(re string, timeout time.Duration) []string {
	v.t.Helper()
	m, err := v.Console.Wait(regexp.MustCompile(re), timeout)
	if err != nil {
		v.Fail("expect %q: %v", re, err)
	}
	return m
}

// Fail fails the test with the reason, the QEMU command line and the last
// console lines.
func (v *VM) Fail(format string, a ...any) {
	v.t.Helper()
	v.t.Fatalf("vm %s: %s\nQEMU: %s\nconsole (%s), last lines:\n%s", v.Name, fmt.Sprintf(format, a...),
		v.CommandLine(), v.LogPath, v.Console.Tail(40))
}

// ExitErr is QEMU's exit status once Done is closed.
func (v *VM) ExitErr() error {
	select {
	case <-v.done:
		return v.err
	default:
		return errors.New("still running")
	}
}

func macFor(name string) string {
	var h uint32 = 2166136261
	for i := 0; i < len(name); i++ {
		h = (h ^ uint32(name[i])) * 16777619
	}
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", byte(h>>16), byte(h>>8), byte(h))
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// Line is one console line with the time it arrived.
type Line struct {
	At   time.Duration // since the VM started
	Text string
}

// Console collects a VM's serial output as lines, ANSI escapes removed.
type Console struct {
	mu     sync.Mutex
	lines  []Line
	closed bool
	wake   chan struct{}
}

func newConsole() *Console { return &Console{wake: make(chan struct{})} }

var ansi = regexp.MustCompile(`\x1b(\[[0-9;?=]*[A-Za-z]|[()][A-Z0-9]|[=>c])`)

func (c *Console) read(r io.Reader, start time.Time) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		s := ansi.ReplaceAllString(sc.Text(), "")
		s = strings.TrimRight(strings.ReplaceAll(s, "\r", ""), " ")
		if s == "" {
			continue
		}
		c.add(Line{At: time.Since(start), Text: s})
	}
	io.Copy(io.Discard, r)
}

func (c *Console) add(l Line) {
	c.mu.Lock()
	c.lines = append(c.lines, l)
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
}

func (c *Console) note(format string, a ...any) {
	c.add(Line{Text: fmt.Sprintf(format, a...)})
}

func (c *Console) close() {
	c.mu.Lock()
	c.closed = true
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
}

// Lines returns a copy of every line so far.
func (c *Console) Lines() []Line {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Line(nil), c.lines...)
}

// Tail returns the last n lines as text.
func (c *Console) Tail(n int) string {
	ls := c.Lines()
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&b, "  %7.2fs %s\n", l.At.Seconds(), l.Text)
	}
	return b.String()
}

// Find returns the first line matching re and its submatches.
func (c *Console) Find(re *regexp.Regexp) (Line, []string, bool) {
	for _, l := range c.Lines() {
		if m := re.FindStringSubmatch(l.Text); m != nil {
			return l, m, true
		}
	}
	return Line{}, nil, false
}

// Wait waits for a line matching re (already seen lines count).
func (c *Console) Wait(re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.After(timeout)
	seen := 0
	for {
		c.mu.Lock()
		for ; seen < len(c.lines); seen++ {
			if m := re.FindStringSubmatch(c.lines[seen].Text); m != nil {
				c.mu.Unlock()
				return m, nil
			}
		}
		wake, closed := c.wake, c.closed
		c.mu.Unlock()
		if closed {
			return nil, errors.New("the VM exited first")
		}
		select {
		case <-wake:
		case <-deadline:
			return nil, fmt.Errorf("no match in %s", timeout)
		}
	}
}
