package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdserver"
	"github.com/weft-net/weft/internal/etcdserver/etcdtest"
)

// writeCert creates a key pair signed by parent (self-signed when parent is
// nil) and writes <name>.pem and <name>-key.pem into dir.
func writeCert(t *testing.T, dir, name string, isCA bool, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func freeLoopbackPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// weftd talks to a user's etcd over TLS with a client certificate.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := writeCert(t, dir, "ca", true, nil, nil)
	writeCert(t, dir, "server", false, ca, caKey)
	writeCert(t, dir, "client", false, ca, caKey)
	url := fmt.Sprintf("https://127.0.0.1:%d", freeLoopbackPort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: filepath.Join(dir, "data"), ClientURLs: []string{url},
		CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server-key.pem"), CAFile: filepath.Join(dir, "ca.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	s, err := New(ctx, Options{Endpoints: []string{url}, CAFile: filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SetConfig(ctx, []byte(`{"Network":"10.244.0.0/16"}`)); err != nil {
		t.Fatalf("over TLS: %v", err)
	}

	// Without a client certificate the server refuses.
	bad, err := New(ctx, Options{Endpoints: []string{url}, CAFile: filepath.Join(dir, "ca.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
	defer scancel()
	if _, err := bad.GetConfigRaw(sctx); err == nil {
		t.Fatal("etcd answered a client without a certificate")
	}
	if _, err := New(ctx, Options{Endpoints: []string{url}, CertFile: filepath.Join(dir, "client.pem")}); err == nil {
		t.Fatal("a certificate without its key was accepted")
	}
}

// weftd authenticates with a user name and password.
func TestAuth(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := ctxT(t)
	admin := newStore(t, ep)
	cli := admin.Client()
	if _, err := cli.UserAdd(ctx, "root", "rootpw"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := New(ctx, Options{Endpoints: []string{ep}, Username: "root", Password: "rootpw"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SetConfig(ctx, []byte(`{"Network":"10.244.0.0/16"}`)); err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	anon := newStore(t, ep)
	if _, err := anon.GetConfigRaw(ctx); err == nil {
		t.Fatal("etcd with auth answered an anonymous client")
	}
}
