package cli

import (
	"context"
	"flag"
	"fmt"

	"github.com/google/uuid"

	"github.com/palisade-cc/palisade/internal/diskkey"
)

// cmdDiskRecoveryKey prints the owner's recovery passphrase of one state
// disk. It needs no keyd and no network: the passphrase is derived from the
// master secret in the owner's secret file, exactly as keyd derives the
// recovery key it hands the node that formats the disk (internal/diskkey),
// so a disk can be opened by hand when its node or keyd is gone.
func cmdDiskRecoveryKey() *command {
	var cluster, node, id string
	return &command{
		name: "disk-recovery-key", usage: "disk-recovery-key --node N --uuid U",
		help: "Print the recovery passphrase of the state disk UUID of NODE (LUKS keyslot 1),\n" +
			"derived offline from the master secret in the owner's secret file. Read the UUID\n" +
			"from the disk (cryptsetup luksUUID DEVICE), then open it by hand with\n" +
			"cryptsetup open DEVICE NAME and type the passphrase, hyphens included.\n" +
			"The passphrase opens that one disk only; treat it like the secret file.",
		example: "  verifier disk-recovery-key --node worker-17 --uuid 0f0e0d0c-0b0a-4908-8706-050403020100\n" +
			"  sudo cryptsetup open /dev/disk/by-partlabel/palisade-state var   # type the printed passphrase\n" +
			"  sudo mount /dev/mapper/var /mnt",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "cluster ID (default: the config's; must match the secret file)")
			fs.StringVar(&node, "node", "", "node ID the disk belongs to (required)")
			fs.StringVar(&id, "uuid", "", "the disk's LUKS UUID (required)")
		},
		run: func(ctx context.Context, e *Env, fs *flag.FlagSet, args []string) error {
			if err := nargs(fs, args, 0); err != nil {
				return err
			}
			if node == "" || id == "" {
				fs.Usage()
				return fail(ExitUsage, "--node and --uuid are required")
			}
			u, err := uuid.Parse(id)
			if err != nil {
				return fail(ExitUsage, "--uuid %q: %v", id, err)
			}
			c, err := e.load()
			if err != nil {
				return err
			}
			if cluster == "" {
				cluster = c.ClusterID
			}
			if cluster != c.ClusterID {
				// The secret file is the config's cluster's (ReadSecret
				// checks): another cluster's disks need its own config.
				return fail(ExitUsage, "--cluster %q: the configuration and its secret file are of cluster %q (use --config)", cluster, c.ClusterID)
			}
			master, err := c.ReadSecret()
			if err != nil {
				return err
			}
			defer clear(master)
			// uuid.String is lower case, as cryptsetup prints the UUID and
			// as the node claimed it from keyd.
			rec, err := diskkey.Recovery(master, cluster, node, u.String())
			if err != nil {
				return fail(ExitUsage, "--node %q / --uuid %q: %v", node, id, err)
			}
			defer clear(rec)
			pass, err := diskkey.Passphrase(rec)
			if err != nil {
				return err
			}
			defer clear(pass)
			_, err = fmt.Fprintf(e.Stdout, "%s\n", pass)
			return err
		},
	}
}
