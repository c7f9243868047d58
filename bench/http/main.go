// Command httpbench serves a directory with the provisioner's HTTP boot
// handler for bench/http.sh. It is a benchmark helper, not the provisioner.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/palisade-cc/palisade/provisioner/httpboot"
)

func main() {
	root := flag.String("root", "", "directory to serve")
	listen := flag.String("listen", "127.0.0.1:8081", "host:port")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: httpbench -root DIR [-listen 127.0.0.1:8081]")
		flag.PrintDefaults()
	}
	flag.Parse()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	s, err := httpboot.New(httpboot.Config{Root: *root, Listen: *listen}, nil, nil, nil)
	if err == nil {
		err = s.Serve(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "httpbench:", err)
		os.Exit(1)
	}
}
