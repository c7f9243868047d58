// Command tftpbench serves a directory with the provisioner's TFTP server
// ("serve") or loads any TFTP server with concurrent downloads ("load") for
// bench/tftp.sh. It is a benchmark helper, not the provisioner binary.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/palisade-cc/palisade/provisioner/tftp"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tftpbench serve|load [flags]\n  e.g. tftpbench load -server 127.0.0.1:69 -file f -clients 50 -blksize 1468 -window 16")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tftpbench:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	root := fs.String("root", "", "directory to serve")
	listen := fs.String("listen", "127.0.0.1:6969", "host:port")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile here until exit")
	fs.Parse(args)
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	s, err := tftp.New(tftp.Config{Root: *root, Listen: *listen, MaxPerClient: 1000, MaxTransfers: 4096},
		slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), nil, nil)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// load runs clients concurrent downloads and prints one line:
// "clients=N bytes=B seconds=S MBps=X" (aggregate MB/s, 1 MB = 1e6 bytes).
func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	server := fs.String("server", "127.0.0.1:69", "host:port")
	file := fs.String("file", "", "file to fetch")
	clients := fs.Int("clients", 1, "concurrent downloads")
	blksize := fs.Int("blksize", 1468, "blksize option, 0 = none")
	window := fs.Int("window", 0, "windowsize option, 0 = none")
	size := fs.Int64("size", -1, "expected size; any other size is an error")
	timeout := fs.Duration("timeout", time.Second, "retransmission timeout")
	fs.Parse(args)
	addr, err := netip.ParseAddrPort(*server)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, *clients)
	bytes := make([]int64, *clients)
	start := time.Now()
	for i := range *clients {
		wg.Go(func() {
			res, err := tftp.Get(ctx, addr, *file, io.Discard, tftp.ClientOptions{
				BlockSize: *blksize, WindowSize: *window, Timeout: *timeout, Retries: 10,
			})
			bytes[i] = res.Bytes
			if err == nil && *size >= 0 && res.Bytes != *size {
				err = fmt.Errorf("got %d bytes, want %d", res.Bytes, *size)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var total int64
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		total += bytes[i]
	}
	fmt.Printf("clients=%d bytes=%d seconds=%.3f MBps=%.1f\n", *clients, total, elapsed.Seconds(), float64(total)/elapsed.Seconds()/1e6)
	return nil
}
