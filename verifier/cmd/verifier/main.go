// Command verifier is the cluster owner's command (docs/verifier.md); all
// logic is in verifier/cli.
package main

import (
	"context"
	"os"
	"os/signal"

	"github.com/palisade-cc/palisade/verifier/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := cli.Run(ctx, os.Args[1:], cli.Env{})
	stop()
	os.Exit(code)
}
