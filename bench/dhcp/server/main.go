// Command server runs the provisioner's DHCP server alone, for bench/dhcp.sh
// and the crash test: one authoritative subnet, leases in a bbolt file. It is
// not the provisioner (that is provisioner/cmd/provisioner).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	"syscall"
	"time"

	"github.com/palisade-cc/palisade/provisioner/dhcp"
)

func main() {
	var cfg dhcp.Config
	var iface string
	var sub dhcp.Subnet
	flag.StringVar(&iface, "iface", "", "interface to serve (SO_BINDTODEVICE)")
	flag.StringVar(&cfg.Listen, "listen", "", "extra UDP address to serve, e.g. 127.0.0.1:6767")
	flag.StringVar(&cfg.LeaseDB, "db", "", "lease file (bbolt)")
	flag.StringVar(&sub.CIDR, "cidr", "10.77.0.0/16", "subnet")
	flag.StringVar(&sub.RangeStart, "start", "10.77.1.0", "first pool address")
	flag.StringVar(&sub.RangeEnd, "end", "10.77.255.254", "last pool address")
	flag.StringVar(&sub.LeaseTime, "lease", "12h", "lease time")
	debug := flag.Bool("debug", false, "debug logging")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here")
	countDB := flag.String("count-db", "", "print how many lease records this (stopped server's) file holds, and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s -iface veth0 -db /tmp/leases.db [flags]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *countDB != "" {
		n, err := countLeases(*countDB)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(n)
		return
	}
	cfg.Mode = dhcp.ModeAuthoritative
	if iface != "" {
		cfg.Interfaces = []string{iface}
	}
	cfg.Subnets = []dhcp.Subnet{sub}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	reg := prometheus.NewRegistry()
	s, err := dhcp.New(cfg, nil, reg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, a := range s.Addrs() {
		fmt.Println("listening", a)
	}
	fmt.Println("ready")
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = s.Serve(ctx)
	// The counters tell a slow run's story: batch sizes, commit times,
	// packets by result.
	if mfs, gerr := reg.Gather(); gerr == nil {
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetName()+"="+l.GetValue())
				}
				switch {
				case m.GetCounter() != nil:
					fmt.Fprintf(os.Stderr, "%s{%s} %g\n", mf.GetName(), strings.Join(labels, ","), m.GetCounter().GetValue())
				case m.GetHistogram() != nil:
					h := m.GetHistogram()
					mean := 0.0
					if h.GetSampleCount() > 0 {
						mean = h.GetSampleSum() / float64(h.GetSampleCount())
					}
					fmt.Fprintf(os.Stderr, "%s count %d mean %g\n", mf.GetName(), h.GetSampleCount(), mean)
				case m.GetGauge() != nil:
					fmt.Fprintf(os.Stderr, "%s %g\n", mf.GetName(), m.GetGauge().GetValue())
				}
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// countLeases counts the records in the lease bucket of a bbolt file.
func countLeases(path string) (int, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	n := 0
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			n += b.Stats().KeyN
			return nil
		})
	})
	return n, err
}
