package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walwatch/walwatch/test/pgtest"
)

// writeSelfSigned writes a self-signed certificate and its key as PEM
// files in dir and returns their paths.
func writeSelfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "walwatch"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for file, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: kder}} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// The etcd API's flags are checked before cp connects to anything: each
// mistake gets an error that names it. (The connection string points at a
// port nothing listens on, so a check that came too late would fail on it
// instead.)
func TestCPEtcdFlagErrors(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	refused := pgtest.RefusedURL(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--etcd-cert-file", cert}, "--etcd-cert-file needs --etcd-key-file"},
		{[]string{"--etcd-key-file", key}, "--etcd-key-file needs --etcd-cert-file"},
		{[]string{"--etcd-trusted-ca-file", cert}, "--etcd-trusted-ca-file needs --etcd-cert-file and --etcd-key-file"},
		{[]string{"--etcd-listen", "", "--etcd-cert-file", cert, "--etcd-key-file", key}, `the etcd API is off (--etcd-listen "")`},
		{[]string{"--etcd-cert-file", missing, "--etcd-key-file", key}, "load --etcd-cert-file and --etcd-key-file"},
		{[]string{"--etcd-cert-file", cert, "--etcd-key-file", garbage}, "load --etcd-cert-file and --etcd-key-file"},
		{[]string{"--etcd-cert-file", key, "--etcd-key-file", cert}, "load --etcd-cert-file and --etcd-key-file"},
		{[]string{"--etcd-cert-file", cert, "--etcd-key-file", key, "--etcd-trusted-ca-file", garbage}, "holds no PEM certificate"},
		{[]string{"--etcd-cert-file", cert, "--etcd-key-file", key, "--etcd-trusted-ca-file", missing}, "read --etcd-trusted-ca-file"},
		{[]string{"--etcd-emulated-version", "3.7"}, "MAJOR.MINOR.PATCH"},
		{[]string{"--etcd-emulated-version", "v3.7.3"}, "MAJOR.MINOR.PATCH"},
		{[]string{"--etcd-advertise-client-urls", "127.0.0.1:2379"}, "is not an http(s)://host:port URL"},
		{[]string{"--etcd-advertise-client-urls", "grpc://127.0.0.1:2379"}, "is not an http(s)://host:port URL"},
		{[]string{"--etcd-progress-interval", "0s"}, "--etcd-progress-interval 0s: must be positive"},
	} {
		_, err := run(t, refused, append([]string{"cp", "--listen", "127.0.0.1:0", "--etcd-listen", "127.0.0.1:0"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("cp %s: %v, want an error saying %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// The auto-compaction flags are checked before cp connects to anything.
func TestCPAutoCompactionFlagErrors(t *testing.T) {
	refused := pgtest.RefusedURL(t)
	for _, args := range [][]string{
		{"--auto-compaction-retention", "soon"},
		{"--auto-compaction-retention", "-1h"},
		{"--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"},
		{"--auto-compaction-mode", "weekly", "--auto-compaction-retention", "1"},
	} {
		_, err := run(t, refused, append([]string{"cp", "--listen", "127.0.0.1:0", "--etcd-listen", ""}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "--auto-compaction-mode") || !strings.Contains(err.Error(), "auto-compaction policy") {
			t.Errorf("cp %s: %v, want an error naming the auto-compaction flags", strings.Join(args, " "), err)
		}
	}
}

// An etcd address already taken stops cp at once, saying how to choose
// another.
func TestCPEtcdAddressTaken(t *testing.T) {
	url := pgtest.NewDatabase(t)
	if _, err := run(t, url, "migrate"); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = run(t, url, "cp", "--listen", "127.0.0.1:0", "--slot", "cp_etcd_taken", "--etcd-listen", taken.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "etcd API: listen on "+taken.Addr().String()) ||
		!strings.Contains(err.Error(), "--etcd-listen") {
		t.Errorf("cp on a taken etcd address: %v, want the listen error and how to choose another", err)
	}
}
