package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/palisade-cc/palisade/images/build"
	"github.com/palisade-cc/palisade/internal/attest"
)

const firmwareUsage = `images firmware-profile --name NAME [--secure-boot] [--pcrs 0,1,2,3,5,6,7] NODE_JSON
Turn a reference boot's verified measurements (the output of
'verifier node --json' for a TPM node booted on trusted hardware) into a firmware
profile for 'images build --tpm-firmware': a JSON list on stdout.
example:
  verifier node --json 10.0.0.7:7444 > ref-boot.json
  images firmware-profile --name rack-a ref-boot.json > tpm-firmware.json
`

// nodeResult is the part of `verifier node --json` read here.
type nodeResult struct {
	Verified *attest.Verified `json:"verified"`
}

func cmdFirmwareProfile(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("firmware-profile", flag.ContinueOnError)
	name := fs.String("name", "", "firmware profile name ([a-z0-9-], e.g. the machine model and firmware version)")
	sb := fs.Bool("secure-boot", false, "the reference boot ran with Secure Boot on")
	list := fs.String("pcrs", "0,1,2,3,5,6,7", "the firmware PCRs to pin (0 and 7 always)")
	fs.Usage = func() { fmt.Fprint(fs.Output(), firmwareUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("want one NODE_JSON file, got %d arguments", fs.NArg())
	}
	var pcrs []int
	for _, s := range strings.Split(*list, ",") {
		i, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--pcrs %q: %v", *list, err)
		}
		pcrs = append(pcrs, i)
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var n nodeResult
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("%s: %v (want the output of verifier node --json)", fs.Arg(0), err)
	}
	if n.Verified == nil || n.Verified.Platform != attest.PlatformTPM {
		return fmt.Errorf("%s: not a verified TPM node (verified.platform must be tpm)", fs.Arg(0))
	}
	f, err := build.FirmwareFromMeasurements(*name, *sb, n.Verified.Measurements, pcrs)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode([]*build.TPMFirmware{f})
}
