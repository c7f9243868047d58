// Command init is PID 1 of Palisade's measured OS: it runs initramfs/boot and,
// when the boot fails, halts (production) or starts a shell (debug).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"time"

	"github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/initramfs/boot"
	"golang.org/x/sys/unix"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "init")
	c, err := api.LoadConfig(api.ConfigPath)
	if err != nil {
		fail(log, nil, err)
	}
	err = boot.Run(context.Background(), log, c, &boot.Linux{})
	fail(log, c, err)
}

// fail never returns. PID 1 must not exit (the kernel panics), and a
// production node must not linger half-booted with a console: it powers off
// so the operator sees a failed boot, never a usable one.
func fail(log *slog.Logger, c *api.Config, err error) {
	log.Error("boot failed", "err", err)
	if c != nil && c.Shell != "" {
		fmt.Fprintf(os.Stderr, "init: debug profile: starting %s\n", c.Shell)
		sh := exec.Command(c.Shell)
		sh.Stdin, sh.Stdout, sh.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := sh.Run(); err != nil {
			log.Error("shell", "err", err)
		}
	}
	time.Sleep(10 * time.Second) // let the console drain
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
