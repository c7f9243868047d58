// Command mesh measures meshd's data path and convergence for bench/mesh.sh:
// iperf3 over a wireguard-go tunnel configured by meshd.Run, over the same
// wireguard-go binary configured by hand with wg(8), and over the plain veth
// under both; and the time a real wireguard-go device with 1,000 emulated
// peers takes to converge after a change.
//
// It is a load generator, not a test: it asserts nothing and prints
// `RATIO <metric> <ours>/<peer> = N.NNx` lines. It needs root, iproute2,
// iperf3, wg and wireguard-go's binary (-wireguard). Two network namespaces
// joined by a veth pair carry everything; the host's interfaces are untouched.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/internal/netns"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/meshd"
)

func main() {
	fs := flag.NewFlagSet("mesh", flag.ExitOnError)
	wgBin := fs.String("wireguard", "wireguard", "wireguard-go's binary (go install golang.zx2c4.com/wireguard@VERSION)")
	dur := fs.Duration("duration", 5*time.Second, "length of one iperf3 run")
	rounds := fs.Int("rounds", 3, "iperf3 runs per path; the paths take turns and the median is reported")
	peers := fs.Int("peers", 1000, "emulated peers for the convergence measurement")
	changes := fs.Int("changes", 10, "peer set changes (one revoked, one admitted) applied and timed")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mesh [-wireguard out/bin/wireguard] [-duration 5s] [-rounds 3] [-peers 1000]")
		fmt.Fprintln(fs.Output(), "example: sudo go run ./bench/mesh -wireguard out/bin/wireguard")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	b := &bench{wgBin: *wgBin, tag: fmt.Sprint(os.Getpid() % 100000)}
	err := b.run(*dur, *rounds, *peers, *changes)
	b.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/mesh:", err)
		os.Exit(1)
	}
}

type bench struct {
	wgBin, tag string
	dir        string
	nsA, nsB   string
	fdA, fdB   int
	undo       []func()
}

func (b *bench) cleanup() {
	for i := len(b.undo) - 1; i >= 0; i-- {
		b.undo[i]()
	}
}

// Addresses. The underlay is the veth; each tunnel has its own /64 and port
// so both can stay up and the paths can take turns.
const (
	underA, underB = "10.99.0.1", "10.99.0.2"
	handA, handB   = "fd99:0:0:1::1", "fd99:0:0:1::2"
	handPort       = 51821
	meshPort       = 51820
	convergePort   = 51822
	mtu            = 1420 // meshd's default; the hand-made tunnel uses the same
)

func (b *bench) run(dur time.Duration, rounds, npeers, changes int) error {
	var err error
	if b.dir, err = os.MkdirTemp("", "bench-mesh-"); err != nil {
		return err
	}
	b.undo = append(b.undo, func() { os.RemoveAll(b.dir) })
	b.nsA, b.nsB = "pmbA"+b.tag, "pmbB"+b.tag
	for _, ns := range []string{b.nsA, b.nsB} {
		if err := sh("ip", "netns", "add", ns); err != nil {
			return err
		}
		b.undo = append(b.undo, func() { sh("ip", "netns", "del", ns) })
		if err := sh("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	if err := sh("ip", "link", "add", "va", "netns", b.nsA, "type", "veth", "peer", "name", "vb", "netns", b.nsB); err != nil {
		return err
	}
	for _, c := range [][]string{
		{"-n", b.nsA, "addr", "add", underA + "/24", "dev", "va"}, {"-n", b.nsA, "link", "set", "va", "up"},
		{"-n", b.nsB, "addr", "add", underB + "/24", "dev", "vb"}, {"-n", b.nsB, "link", "set", "vb", "up"},
	} {
		if err := sh(append([]string{"ip"}, c...)...); err != nil {
			return err
		}
	}
	if b.fdA, err = nsFD(b.nsA); err != nil {
		return err
	}
	if b.fdB, err = nsFD(b.nsB); err != nil {
		return err
	}

	// Four wireguard-go daemons: two for the hand-made tunnel, two for
	// meshd's. Interface names carry the PID: wireguard-go's UAPI sockets
	// share /var/run/wireguard across namespaces.
	ifs := map[string]string{"hA": b.nsA, "hB": b.nsB, "mA": b.nsA, "mB": b.nsB, "cA": b.nsA}
	for short, ns := range ifs {
		if err := b.wireguard(ns, short+b.tag); err != nil {
			return err
		}
	}
	if err := b.handTunnel(); err != nil {
		return fmt.Errorf("hand-made tunnel: %w", err)
	}
	meshA, meshB, err := b.meshTunnel()
	if err != nil {
		return fmt.Errorf("meshd tunnel: %w", err)
	}

	srv := exec.Command("ip", "netns", "exec", b.nsB, "iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		return fmt.Errorf("iperf3 -s: %w", err)
	}
	b.undo = append(b.undo, func() { srv.Process.Kill(); srv.Wait() })

	paths := []struct{ name, to string }{{"veth", underB}, {"hand-wg", handB}, {"meshd", meshB.String()}}
	got := map[string][]float64{}
	for r := range rounds {
		for i := range paths {
			p := paths[(i+r)%len(paths)] // rotate, so drift on a shared machine spreads evenly
			bps, err := b.iperf(p.to, dur)
			if err != nil {
				return fmt.Errorf("iperf3 over %s (%s): %w", p.name, p.to, err)
			}
			got[p.name] = append(got[p.name], bps)
		}
	}
	veth, hand, mesh := median(got["veth"]), median(got["hand-wg"]), median(got["meshd"])
	fmt.Printf("# iperf3 TCP %s → %s, %d × %v per path, median (all runs in Gbit/s):\n", b.nsA, b.nsB, rounds, dur)
	for _, p := range paths {
		fmt.Printf("#   %-8s %6.2f Gbit/s  %v\n", p.name, median(got[p.name])/1e9, gbits(got[p.name]))
	}
	fmt.Printf("# meshd's tunnel %v → %v and the hand-made one are the same wireguard-go binary, MTU %d\n", meshA, meshB, mtu)
	fmt.Printf("RATIO mesh-throughput meshd/hand-wg = %.2fx\n", mesh/hand)
	fmt.Printf("RATIO mesh-throughput meshd/veth = %.2fx\n", mesh/veth)
	fmt.Printf("RATIO mesh-throughput hand-wg/veth = %.2fx\n", hand/veth)

	return b.converge("cA"+b.tag, npeers, changes)
}

// wireguard starts wireguard-go in the foreground inside ns and waits for its
// UAPI socket.
func (b *bench) wireguard(ns, ifname string) error {
	cmd := exec.Command("ip", "netns", "exec", ns, b.wgBin, "-f", ifname)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
	log, err := os.Create(filepath.Join(b.dir, ifname+".log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s -f %s: %w", b.wgBin, ifname, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.undo = append(b.undo, func() {
		// SIGTERM: wireguard-go removes its interface and socket.
		cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	sock := "/var/run/wireguard/" + ifname + ".sock"
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			out, _ := os.ReadFile(log.Name())
			return fmt.Errorf("%s -f %s exited: %s", b.wgBin, ifname, out)
		default:
		}
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
	}
	return fmt.Errorf("%s: no UAPI socket after 10 s", sock)
}

// handTunnel configures hA/hB the way an operator would, with wg and ip.
func (b *bench) handTunnel() error {
	ka, kb := mustKey(), mustKey()
	type side struct {
		ns, ifname, addr, peerAddr, peerUnder string
		key, peer                             wgtypes.Key
	}
	for _, s := range []side{
		{b.nsA, "hA" + b.tag, handA, handB, underB, ka, kb.PublicKey()},
		{b.nsB, "hB" + b.tag, handB, handA, underA, kb, ka.PublicKey()},
	} {
		kf := filepath.Join(b.dir, s.ifname+".key")
		if err := os.WriteFile(kf, []byte(s.key.String()+"\n"), 0o600); err != nil {
			return err
		}
		for _, c := range [][]string{
			{"wg", "set", s.ifname, "private-key", kf, "listen-port", fmt.Sprint(handPort),
				"peer", s.peer.String(), "allowed-ips", s.peerAddr + "/128", "endpoint", fmt.Sprintf("%s:%d", s.peerUnder, handPort)},
			{"ip", "addr", "add", s.addr + "/64", "dev", s.ifname, "nodad"},
			{"ip", "link", "set", s.ifname, "mtu", fmt.Sprint(mtu), "up"},
		} {
			if err := sh(append([]string{"ip", "netns", "exec", s.ns}, c...)...); err != nil {
				return err
			}
		}
	}
	return nil
}

// meshTunnel runs meshd.Run for mA and mB, each on an OS thread inside its
// namespace (as meshd runs on a node), following a static two-node peer set
// in place of keyd: the data path is what is measured here; keyd's part is
// bench/mesh.sh's revocation line.
func (b *bench) meshTunnel() (netip.Addr, netip.Addr, error) {
	prefix := netip.MustParsePrefix("fd99:0:0:2::/64")
	type node struct {
		id, ns, ifname, under string
		fd                    int
		mesh                  netip.Addr
		keyFile               string
		key                   wgtypes.Key
	}
	ns := []*node{
		{id: "node-a", ns: b.nsA, ifname: "mA" + b.tag, under: underA, fd: b.fdA, mesh: nthAddr(prefix, 1)},
		{id: "node-b", ns: b.nsB, ifname: "mB" + b.tag, under: underB, fd: b.fdB, mesh: nthAddr(prefix, 2)},
	}
	src := &staticSource{set: &api.PeerSet{Revision: 1}}
	for _, n := range ns {
		n.keyFile = filepath.Join(b.dir, n.id+".key")
		k, err := meshd.LoadOrCreateKey(n.keyFile)
		if err != nil {
			return netip.Addr{}, netip.Addr{}, err
		}
		n.key = k
		pub := k.PublicKey()
		src.set.Peers = append(src.set.Peers, api.Peer{NodeID: n.id, WireGuardKey: pub[:], MeshAddress: n.mesh.String(),
			Endpoints: []string{fmt.Sprintf("%s:%d", n.under, meshPort)}})
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, len(ns))
	b.undo = append(b.undo, func() { cancel(); wg.Wait() })
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	for _, n := range ns {
		cfg := meshd.Config{Version: 1, Interface: n.ifname, KeyFile: n.keyFile, ListenPort: meshPort, MTU: mtu, StatusListen: "-"}
		cfg.SetDefaults()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := inNS(n.fd, func() error { return meshd.Run(ctx, cfg, meshd.Self{MeshAddress: n.mesh.String()}, src, log) }); err != nil {
				errs <- fmt.Errorf("meshd.Run %s: %w", n.id, err)
			}
		}()
	}
	wgc, err := wgctrl.New()
	if err != nil {
		return netip.Addr{}, netip.Addr{}, err
	}
	defer wgc.Close()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-errs:
			return netip.Addr{}, netip.Addr{}, err
		default:
		}
		ready := 0
		for _, n := range ns {
			if d, err := wgc.Device(n.ifname); err == nil && len(d.Peers) == 1 && d.PrivateKey == n.key {
				ready++
			}
		}
		if ready == len(ns) {
			return ns[0].mesh, ns[1].mesh, nil
		}
		if time.Now().After(end) {
			return netip.Addr{}, netip.Addr{}, errors.New("meshd did not configure both devices in 10 s")
		}
	}
}

// staticSource is a keyd that never changes its peer set.
type staticSource struct{ set *api.PeerSet }

func (s *staticSource) Peers(ctx context.Context, since uint64, wait time.Duration) (*api.PeerSet, error) {
	if since < s.set.Revision {
		return s.set, nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return s.set, nil
	}
}

// iperf runs one iperf3 TCP test from namespace A to addr and returns the
// receiver's bits per second.
func (b *bench) iperf(addr string, dur time.Duration) (float64, error) {
	var out []byte
	var err error
	// The server may still be starting, or finishing the previous test.
	for try := 0; try < 20; try++ {
		out, err = exec.Command("ip", "netns", "exec", b.nsA, "iperf3", "-c", addr, "-p", "5201", "-J",
			"-t", fmt.Sprint(dur.Seconds())).Output()
		if err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("iperf3 -J output: %w", err)
	}
	if r.Error != "" || r.End.SumReceived.BitsPerSecond == 0 {
		return 0, fmt.Errorf("iperf3: %q, %v bit/s", r.Error, r.End.SumReceived.BitsPerSecond)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

// converge times meshd's Applier on a real wireguard-go device (UAPI) with
// npeers emulated peers: the first apply, then each change of one revoked
// and one admitted peer (what a node does with each new revision).
func (b *bench) converge(ifname string, npeers, changes int) error {
	wgc, err := wgctrl.New()
	if err != nil {
		return err
	}
	defer wgc.Close()
	self := mustKey()
	ap := &meshd.Applier{WG: wgc, Interface: ifname, PrivateKey: self, ListenPort: convergePort}
	pub := self.PublicKey()
	set := &api.PeerSet{Revision: 1, Peers: []api.Peer{{NodeID: "self", WireGuardKey: pub[:], MeshAddress: "fd99:0:0:3::1"}}}
	next := 2
	newPeer := func() api.Peer {
		k := mustKey().PublicKey()
		n := next
		next++
		return api.Peer{NodeID: fmt.Sprintf("node-%d", n), WireGuardKey: k[:],
			MeshAddress: nthAddr(netip.MustParsePrefix("fd99:0:0:3::/64"), n).String(),
			MeshIPv4:    nthAddr(netip.MustParsePrefix("10.100.0.0/16"), n).String(),
			Endpoints:   []string{fmt.Sprintf("10.101.%d.%d:51820", n/250, n%250+1)}}
	}
	for range npeers {
		set.Peers = append(set.Peers, newPeer())
	}
	ctx := context.Background()
	start := time.Now()
	ch, err := ap.Apply(ctx, set)
	if err != nil {
		return fmt.Errorf("first apply: %w", err)
	}
	first := time.Since(start)
	if ch.Added != npeers {
		return fmt.Errorf("first apply added %d peers, want %d", ch.Added, npeers)
	}
	var took []float64
	for c := range changes {
		set = &api.PeerSet{Revision: set.Revision + 1, Peers: slices.Clone(set.Peers)}
		i := 1 + rand.IntN(len(set.Peers)-1) // never self
		set.Peers = slices.Delete(set.Peers, i, i+1)
		set.Peers = append(set.Peers, newPeer())
		start := time.Now()
		ch, err := ap.Apply(ctx, set)
		if err != nil {
			return fmt.Errorf("change %d: %w", c, err)
		}
		took = append(took, float64(time.Since(start)))
		if ch != (meshd.Change{Added: 1, Removed: 1}) {
			return fmt.Errorf("change %d: %+v, want one added and one removed", c, ch)
		}
	}
	d, err := wgc.Device(ifname)
	if err != nil {
		return err
	}
	if len(d.Peers) != npeers {
		return fmt.Errorf("device has %d peers after the changes, want %d", len(d.Peers), npeers)
	}
	med := time.Duration(median(took))
	fmt.Printf("# %d emulated peers on wireguard-go (UAPI): first apply %v; one revoked + one admitted, median of %d: %v (max %v)\n",
		npeers, first.Round(time.Microsecond), changes, med.Round(time.Microsecond), time.Duration(slices.Max(took)).Round(time.Microsecond))
	fmt.Printf("RATIO mesh-converge-%d meshd/goal-1s = %.4fx\n", npeers, med.Seconds())
	return nil
}

// inNS runs fn on an OS thread in network namespace fd; the thread goes back
// to the scheduler only if it made it back to its own namespace.
func inNS(fd int, fn func() error) error { return netns.Do(fd, fn) }

func nsFD(ns string) (int, error) { return netns.Open(ns) }

func sh(args ...string) error {
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func mustKey() wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		panic(err) // the system's random source failed
	}
	return k
}

// nthAddr is p's n-th address.
func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func gbits(xs []float64) []string {
	var out []string
	for _, x := range xs {
		out = append(out, fmt.Sprintf("%.2f", x/1e9))
	}
	return out
}
