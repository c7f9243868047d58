package config

// Template is what `provisioner config init` writes: every section, with
// the defaults, commented. It parses and validates as it is (a test checks).
const Template = `// Palisade provisioner configuration (docs/provisioner.md).
// JSON with // and /* */ comments. Unknown fields are errors.
{
  // The file format version; this build reads 1.
  "version": 1,

  // inventory.db (machines, events, profiles) and leases.db live here.
  "data_dir": "/var/lib/palisade-provisioner",
  // Served by TFTP and HTTP boot; "provisioner images add" copies into it.
  // Default: <data_dir>/images.
  // "images_dir": "/var/lib/palisade-provisioner/images",

  // API, web UI and /metrics on one listener.
  "api": {
    "listen": "127.0.0.1:8081",
    // One line, at least 16 bytes, mode 0600. Admin may change things.
    "admin_token_file": "/etc/palisade/provisioner-admin.token"
    // A read-only token may only look.
    // , "read_only_token_file": "/etc/palisade/provisioner-read.token"
  },

  // DHCPv4. "proxy" answers only PXE/HTTP boot clients and leaves
  // addresses to the site's DHCP server; "authoritative" hands out
  // addresses from "subnets" (leases in <data_dir>/leases.db).
  // Serve only the interfaces named here; never the whole host.
  "dhcp": {
    "mode": "proxy",
    "interfaces": [],
    // An extra UDP socket without an interface: unicast and relayed
    // requests only (e.g. behind a DHCP relay).
    "listen": "127.0.0.1:6767"
    // Authoritative example:
    // "mode": "authoritative", "interfaces": ["eno2"],
    // "subnets": [{"cidr": "10.20.0.0/16", "range_start": "10.20.1.0",
    //   "range_end": "10.20.255.254", "router": "10.20.0.1",
    //   "lease_time": "12h",
    //   "reservations": [{"mac": "52:54:00:12:34:56", "ip": "10.20.0.10"}]}]
  },

  // TFTP (RFC 1350, 2347-2349, 7440 windowsize), read-only from images_dir.
  "tftp": {
    "listen": "127.0.0.1:69",
    "max_block_size": 1468,
    "max_window_size": 64,
    "max_per_client": 8
  },

  // UEFI HTTP boot and plain image download, from images_dir.
  "http": {
    "listen": "127.0.0.1:8080"
  },

  "boot": {
    // URL prefix HTTP boot clients are sent to; default from http.listen.
    // "http_base": "http://192.0.2.1:8080",
    // Offered to legacy BIOS clients (which cannot boot a UKI); empty: none.
    "bios_file": "",
    // Booted by machines not yet accepted; empty: they get no answer.
    "discovery_profile": "",
    // Booted by accepted machines without a profile of their own.
    "default_profile": "worker"
  },

  // Accept machines without a click. Every criterion set must match.
  "accept": [
    // {"name": "rack1", "mac_prefix": "52:54:00:aa", "profile": "worker"},
    // {"name": "lab", "mac_from": "02:00:00:00:00:00", "mac_to": "02:00:00:00:0f:ff"},
    // {"name": "known", "uuids": ["4c4c4544-0042-3510-8052-b4c04f4e3232"]}
  ],

  // Written into the inventory at start. platform: tpm, sev-snp, tdx;
  // role: control-plane, worker. keyd_hints (up to 16 host:port) and
  // cluster (1-64 of A-Za-z0-9._-) reach accepted machines as DHCP option
  // 224, "keyd=H:P,H:P cluster=ID", in authoritative mode; in proxy mode
  // the site's DHCP server or the UKI's cmdline (palisade.keyd=,
  // palisade.cluster=) must carry them. Like cmdline, they are only hints.
  "profiles": [
    {
      "name": "worker",
      "image": "palisade-uki.efi",
      "platform": "tpm",
      "role": "worker",
      "keyd_hints": [],
      // "keyd_hints": ["10.20.0.2:7443", "10.20.0.3:7443"],
      "cluster": ""
    }
  ],

  // level: debug, info, warn, error; format: text, json.
  "log": {"level": "info", "format": "text"}
}
`
