// Command provisioner serves PXE/HTTP boot with a machine inventory and is
// its command-line client; see docs/provisioner.md and `provisioner --help`.
package main

import (
	"os"

	"github.com/palisade-cc/palisade/provisioner"
)

func main() { os.Exit(provisioner.Main(os.Args[1:])) }
