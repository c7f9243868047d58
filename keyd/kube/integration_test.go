package kube

// The integration tier: keyd/kube against a real kube-apiserver,
// kube-controller-manager (bootstrapsigner, tokencleaner, csrapproving,
// csrsigning) and etcd on loopback, built by scripts/k8s.sh from the
// pinned k8s.io/kubernetes. A node's side is kubeadm's own Go code: token
// discovery (discovery/token.RetrieveValidatedConfigInfo) from the
// JoinConfiguration internal/kubeconf writes, and client-go's CSR request,
// which is the kubelet's TLS bootstrap.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/certificate/csr"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	kubeadmapi "k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm"
	"k8s.io/kubernetes/cmd/kubeadm/app/discovery/token"
	"k8s.io/kubernetes/cmd/kubeadm/app/phases/certs"
	"k8s.io/kubernetes/cmd/kubeadm/app/phases/copycerts"
	kubeconfigphase "k8s.io/kubernetes/cmd/kubeadm/app/phases/kubeconfig"

	"github.com/palisade-cc/palisade/internal/kubeconf"
	"github.com/palisade-cc/palisade/keyd/api"
)

// binEnv names the directory with kube-apiserver, kube-controller-manager
// and etcd (scripts/k8s.sh prints it).
const binEnv = "PALISADE_K8S_BIN"

type cluster struct {
	dir      string
	endpoint string // 127.0.0.1:port
	pki      string
	init     *kubeadmapi.InitConfiguration
	admin    kubernetes.Interface
	caCert   *x509.Certificate
}

func TestIntegration(t *testing.T) {
	bin := os.Getenv(binEnv)
	if bin == "" {
		t.Skipf("%s unset: build the servers with scripts/k8s.sh and run with %s=$(scripts/k8s.sh | tail -1)", binEnv, binEnv)
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "etcd"} {
		if fi, err := os.Stat(filepath.Join(bin, b)); err != nil || fi.Mode()&0o111 == 0 {
			t.Fatalf("%s=%s: %s missing or not executable (scripts/k8s.sh builds it)", binEnv, bin, b)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(ctx, t, bin)

	// Built as keyd -tags kube builds it: from its configuration's files.
	iss, err := FromFiles(ctx, Files{Kubeconfig: filepath.Join(c.dir, "super-admin.conf"), CACert: filepath.Join(c.pki, "ca.crt"),
		APIServerEndpoint: c.endpoint, ControlPlane: true, CertificatesDir: c.pki}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if iss.CACert == nil || !iss.CACert.Equal(c.caCert) {
		t.Fatal("FromFiles: the issuer pins another CA than ca.crt")
	}

	t.Run("join", func(t *testing.T) {
		j, err := iss.Issue(ctx, "node-1", false)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		info, err := discover(j, 30*time.Second)
		if err != nil {
			t.Fatalf("kubeadm token discovery: %v", err)
		}
		t.Logf("discovery in %v", time.Since(start).Round(time.Millisecond))
		// The discovered cluster is ours: the CA keyd pinned, the endpoint.
		for _, cl := range info.Clusters {
			if cl.Server != "https://"+c.endpoint || !bytes.Contains(cl.CertificateAuthorityData, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.caCert.Raw})) {
				t.Errorf("discovered cluster %s with another CA", cl.Server)
			}
		}
		certPEM, err := tlsBootstrap(ctx, info, j.Token, "node-1")
		if err != nil {
			t.Fatalf("TLS bootstrap with the token: %v", err)
		}
		blk, _ := pem.Decode(certPEM)
		if blk == nil {
			t.Fatal("issued certificate is not PEM")
		}
		kc, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if kc.Subject.CommonName != "system:node:node-1" || kc.CheckSignatureFrom(c.caCert) != nil {
			t.Errorf("kubelet certificate %q, signed by the cluster CA: %v", kc.Subject, kc.CheckSignatureFrom(c.caCert))
		}
		// The token did its job: the sweep deletes it.
		n, err := iss.Sweep(ctx)
		if err != nil || n != 1 {
			t.Fatalf("Sweep after the join: deleted %d, %v; want the used token", n, err)
		}
		// The API server's authenticator follows Secrets via an informer.
		waitFor(ctx, t, "the used token to stop authenticating", func() bool {
			_, err := tokenClient(t, info, j.Token).CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return isUnauthorized(err)
		})
	})

	t.Run("control-plane certificate key", func(t *testing.T) {
		j, err := iss.Issue(ctx, "cp-2", true)
		if err != nil {
			t.Fatal(err)
		}
		if j.CertificateKey == "" {
			t.Fatal("no certificate key")
		}
		info, err := discover(j, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// kubeadm join --control-plane's download, with the joiner's
		// bootstrap token and the key: the cluster CA key arrives.
		dir := t.TempDir()
		cfg := &kubeadmapi.InitConfiguration{}
		cfg.CertificatesDir = dir
		if err := copycerts.DownloadCerts(tokenClient(t, info, j.Token), cfg, j.CertificateKey); err != nil {
			t.Fatalf("kubeadm's DownloadCerts: %v", err)
		}
		want, _ := os.ReadFile(filepath.Join(c.pki, "ca.key"))
		got, err := os.ReadFile(filepath.Join(dir, "ca.key"))
		if err != nil || !bytes.Equal(got, want) || len(want) == 0 {
			t.Fatalf("downloaded ca.key differs from the cluster's (%v)", err)
		}
		// A key of another upload (after a rotation) opens nothing.
		if err := iss.Revoke(ctx, "cp-2"); err != nil {
			t.Fatal(err)
		}
		j2, err := iss.Issue(ctx, "cp-3", true)
		if err != nil {
			t.Fatal(err)
		}
		if j2.CertificateKey == j.CertificateKey {
			t.Fatal("revoking a control-plane joiner did not rotate the certificate key")
		}
		info2, err := discover(j2, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := copycerts.DownloadCerts(tokenClient(t, info2, j2.Token), cfg, j.CertificateKey); err == nil {
			t.Error("the revoked joiner's certificate key still decrypts kubeadm-certs")
		}
		if err := iss.Revoke(ctx, "cp-3"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("wrong CA hash", func(t *testing.T) {
		j, err := iss.Issue(ctx, "node-2", false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := discover(j, 30*time.Second); err != nil {
			t.Fatalf("the unchanged material fails: %v", err)
		}
		other := testCA(t)
		bad := *j
		bad.CACertHashes = []string{hashOf(other)}
		if _, err := discover(&bad, 5*time.Second); err == nil {
			t.Fatal("discovery accepted a CA that does not match the pinned hash")
		}
		// Wrong token secret, right ID: cluster-info's signature fails.
		bad = *j
		bad.Token = j.Token[:7] + strings.Repeat("0", 16)
		if bad.Token == j.Token {
			bad.Token = j.Token[:7] + strings.Repeat("1", 16)
		}
		if _, err := discover(&bad, 5*time.Second); err == nil {
			t.Fatal("discovery accepted a forged token secret")
		}
		if err := iss.Revoke(ctx, "node-2"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("revoked node", func(t *testing.T) {
		j, err := iss.Issue(ctx, "node-3", false)
		if err != nil {
			t.Fatal(err)
		}
		info, err := discover(j, 30*time.Second)
		if err != nil {
			t.Fatalf("before revocation: %v", err)
		}
		if err := iss.Revoke(ctx, "node-3"); err != nil {
			t.Fatal(err)
		}
		// The API server's token authenticator and the bootstrap signer
		// both follow the Secret through informers: give them a moment,
		// then the token must be dead for both.
		waitFor(ctx, t, "the revoked token's cluster-info signature to go", func() bool {
			cm, err := c.admin.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
			return err == nil && cm.Data[bootstrapapi.JWSSignatureKeyPrefix+j.Token[:6]] == ""
		})
		if _, err := discover(j, 5*time.Second); err == nil {
			t.Error("discovery with a revoked node's token succeeded")
		}
		waitFor(ctx, t, "the revoked token to stop authenticating", func() bool {
			_, err := tokenClient(t, info, j.Token).CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return isUnauthorized(err)
		})
		if _, err := tlsBootstrap(ctx, info, j.Token, "node-3"); !isUnauthorized(err) {
			t.Errorf("TLS bootstrap with a revoked node's token: %v, want Unauthorized", err)
		}
	})

	t.Run("expired token", func(t *testing.T) {
		// The same issuer, its clock set back so that the token it
		// creates expired a second ago.
		past := *iss
		past.Now = func() time.Time { return time.Now().Add(-DefaultTTL - time.Second) }
		j, err := past.Issue(ctx, "node-4", false)
		if err != nil {
			t.Fatal(err)
		}
		if !j.Expires.Before(time.Now()) {
			t.Fatalf("token expires %v, not in the past", j.Expires)
		}
		if _, err := discover(j, 5*time.Second); err == nil {
			t.Error("discovery with an expired token succeeded")
		}
		good, err := iss.Issue(ctx, "node-5", false)
		if err != nil {
			t.Fatal(err)
		}
		info, err := discover(good, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tlsBootstrap(ctx, info, j.Token, "node-4"); !isUnauthorized(err) {
			t.Errorf("TLS bootstrap with an expired token: %v, want Unauthorized", err)
		}
		// Expiry is swept by keyd itself, not only by tokencleaner.
		if _, err := iss.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.admin.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, "bootstrap-token-"+j.Token[:6], metav1.GetOptions{}); err == nil {
			t.Error("expired token still stored after Sweep")
		}
	})
}

// discover runs kubeadm's token discovery from the JoinConfiguration a node
// would write for j (internal/kubeconf), as `kubeadm join` does.
func discover(j *api.KubeJoin, timeout time.Duration) (*clientcmdapi.Config, error) {
	cfg, err := kubeconf.JoinConfig(
		kubeconf.Cluster{ControlPlaneEndpoint: j.APIServerEndpoint, PodSubnet: "10.244.0.0/16"},
		kubeconf.Node{Name: "joiner", MeshAddress: netip.MustParseAddr("127.0.0.1")},
		kubeconf.Join{APIServerEndpoint: j.APIServerEndpoint, Token: j.Token, CACertHashes: j.CACertHashes, CertificateKey: j.CertificateKey},
	)
	if err != nil {
		return nil, err
	}
	internal, err := kubeconf.ValidateJoin(cfg)
	if err != nil {
		return nil, err
	}
	return token.RetrieveValidatedConfigInfo(nil, &internal.Discovery, timeout)
}

// tokenClient is a client of the discovered cluster authenticated by the
// bootstrap token, as the kubelet's bootstrap kubeconfig is.
func tokenClient(t *testing.T, info *clientcmdapi.Config, tok string) kubernetes.Interface {
	t.Helper()
	var cl *clientcmdapi.Cluster
	for _, c := range info.Clusters {
		cl = c
	}
	if cl == nil {
		t.Fatal("discovered kubeconfig has no cluster")
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{
		Host:            cl.Server,
		TLSClientConfig: rest.TLSClientConfig{CAData: cl.CertificateAuthorityData},
		BearerToken:     tok,
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// tlsBootstrap is the kubelet's TLS bootstrap: a node-client CSR posted
// with the bootstrap token, auto-approved and signed by the controller
// manager. It returns the issued certificate.
func tlsBootstrap(ctx context.Context, info *clientcmdapi.Config, tok, nodeName string) ([]byte, error) {
	var cl *clientcmdapi.Cluster
	for _, c := range info.Clusters {
		cl = c
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{
		Host:            cl.Server,
		TLSClientConfig: rest.TLSClientConfig{CAData: cl.CertificateAuthorityData},
		BearerToken:     tok,
		Timeout:         10 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
	}, key)
	if err != nil {
		return nil, err
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	name, uid, err := csr.RequestCertificateWithContext(ctx, cs, csrPEM, "", certv1.KubeAPIServerClientKubeletSignerName, nil,
		[]certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}, key)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return csr.WaitForCertificate(wctx, cs, name, uid)
}

func isUnauthorized(err error) bool {
	return err != nil && strings.Contains(err.Error(), "Unauthorized")
}

func hashOf(c *x509.Certificate) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(c.RawSubjectPublicKeyInfo))
}

func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startCluster makes the PKI with kubeadm's certs and kubeconfig phases from
// the InitConfiguration internal/kubeconf writes, then starts etcd,
// kube-apiserver and kube-controller-manager on loopback. Every process is
// stopped by its PID when the test ends, pass or fail.
func startCluster(ctx context.Context, t *testing.T, bin string) *cluster {
	t.Helper()
	dir := t.TempDir()
	apiPort := freePort(t)
	c := &cluster{dir: dir, endpoint: net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort)), pki: filepath.Join(dir, "pki")}

	initCfg, clusterCfg, err := kubeconf.InitConfig(
		kubeconf.Cluster{ControlPlaneEndpoint: c.endpoint, PodSubnet: "10.244.0.0/16"},
		kubeconf.Node{Name: "cp-1", MeshAddress: netip.MustParseAddr("127.0.0.1")},
	)
	if err != nil {
		t.Fatal(err)
	}
	internal, err := kubeconf.ValidateInit(initCfg, clusterCfg)
	if err != nil {
		t.Fatal(err)
	}
	internal.CertificatesDir = c.pki
	internal.LocalAPIEndpoint.BindPort = int32(apiPort)
	// ECDSA keys: RSA-2048 generation of a dozen keys costs seconds.
	internal.EncryptionAlgorithm = kubeadmapi.EncryptionAlgorithmECDSAP256
	c.init = internal
	if err := certs.CreatePKIAssets(internal); err != nil {
		t.Fatalf("kubeadm certs phase: %v", err)
	}
	for _, f := range []string{"super-admin.conf", "controller-manager.conf"} {
		if err := kubeconfigphase.CreateKubeConfigFile(f, dir, internal); err != nil {
			t.Fatalf("kubeadm kubeconfig phase (%s): %v", f, err)
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(c.pki, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(caPEM)
	if blk == nil {
		t.Fatal("ca.crt is not PEM")
	}
	if c.caCert, err = x509.ParseCertificate(blk.Bytes); err != nil {
		t.Fatal(err)
	}

	etcdClient, etcdPeer := freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	start(t, dir, filepath.Join(bin, "etcd"),
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-cluster=default=http://127.0.0.1:%d", etcdPeer),
		"--log-level=warn",
	)
	pki := func(f string) string { return filepath.Join(c.pki, f) }
	start(t, dir, filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", apiPort),
		// A loopback API server has no Service endpoints to reconcile.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file="+pki("apiserver.crt"), "--tls-private-key-file="+pki("apiserver.key"),
		"--client-ca-file="+pki("ca.crt"),
		"--service-account-key-file="+pki("sa.pub"), "--service-account-signing-key-file="+pki("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/12",
		"--authorization-mode=Node,RBAC",
		"--enable-bootstrap-token-auth=true",
		"--profiling=false",
	)
	rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dir, "super-admin.conf"))
	if err != nil {
		t.Fatal(err)
	}
	rc.Timeout = 10 * time.Second
	admin, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	c.admin = admin
	began := time.Now()
	waitFor(ctx, t, "kube-apiserver /readyz", func() bool {
		b, err := admin.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(b) == "ok"
	})
	t.Logf("kube-apiserver ready in %v", time.Since(began).Round(time.Millisecond))

	// After the API server is ready: the controller manager exits at start
	// if RBAC's bootstrap roles are not there yet.
	kcmPort := freePort(t)
	start(t, dir, filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig="+filepath.Join(dir, "controller-manager.conf"),
		"--authentication-kubeconfig="+filepath.Join(dir, "controller-manager.conf"),
		"--authorization-kubeconfig="+filepath.Join(dir, "controller-manager.conf"),
		"--controllers=bootstrapsigner,tokencleaner,csrapproving,csrsigning",
		"--leader-elect=false",
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", kcmPort),
		"--cluster-signing-cert-file="+pki("ca.crt"), "--cluster-signing-key-file="+pki("ca.key"),
		"--use-service-account-credentials=true",
	)

	insecure := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		// Its self-signed serving certificate; only liveness is asked.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	waitFor(ctx, t, "kube-controller-manager /healthz", func() bool {
		resp, err := insecure.Get(fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	insecure.CloseIdleConnections()
	return c
}

// start runs a server with its output in dir/<name>.log, and registers its
// stop (by PID, the whole process group) and, if the test failed, the tail
// of its log.
func start(t *testing.T, dir, path string, args ...string) {
	t.Helper()
	name := filepath.Base(path)
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-exited
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("--- %s (pid %d) %s, last lines:\n%s", name, pid, strings.Join(args, " "), b)
		}
	})
	// A server that dies at once (bad flag, port taken) fails the test
	// now, with its log, rather than a readiness timeout later.
	select {
	case err := <-exited:
		exited <- err
		b, _ := os.ReadFile(logPath)
		t.Fatalf("%s exited at start: %v\n%s", name, err, b)
	case <-time.After(200 * time.Millisecond):
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
