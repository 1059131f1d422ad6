// sign-artifact signs a build artefact with a designated FerroHSM key, writes the DER signature
// and the public key, and verifies the signature locally (crypto/ecdsa, crypto/rsa) and, when
// openssl is installed, with `openssl dgst` too. The correlation id lands in the audit log.
//
// Usage: go run . -key release-signing [-correlation-id ID] [-out FILE.sig] ARTEFACT
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Result describes one signed artefact.
type Result struct {
	SignaturePath string
	PublicKeyPath string
	KeyVersion    int
	Algorithm     string
	CorrelationID string
	OpenSSL       string // openssl's verdict, or "" when openssl is not installed
}

func hashFor(algorithm string) (crypto.Hash, func() hash.Hash, string) {
	if algorithm == "ec-p384" {
		return crypto.SHA384, sha512.New384, "sha384"
	}
	return crypto.SHA256, sha256.New, "sha256"
}

func digestFile(path string, newHash func() hash.Hash) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := newHash()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// verifyLocally checks the DER signature over digest with the PEM public key.
func verifyLocally(pemText string, hashID crypto.Hash, digest, der []byte, scheme string) error {
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		return errors.New("public key is not PEM")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return err
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, der) {
			return errors.New("ECDSA signature does not verify")
		}
		return nil
	case *rsa.PublicKey:
		if scheme == "rsa-pkcs1v15-sha256" {
			return rsa.VerifyPKCS1v15(k, hashID, digest, der)
		}
		return rsa.VerifyPSS(k, hashID, digest, der, &rsa.PSSOptions{SaltLength: 32, Hash: hashID})
	}
	return fmt.Errorf("unexpected public key type %T", pub)
}

func opensslVerify(artefact, sigPath, pemPath, hashName, scheme string) (string, error) {
	if _, err := exec.LookPath("openssl"); err != nil {
		return "", nil
	}
	args := []string{"dgst", "-" + hashName, "-verify", pemPath}
	if scheme == "rsa-pss-sha256" {
		args = append(args, "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32")
	}
	args = append(args, "-signature", sigPath, artefact)
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("openssl could not verify: %s", strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// SignArtefact signs artefact with key and verifies the result; see Result.
func SignArtefact(c *Client, key, artefact, sigPath, correlationID string) (*Result, error) {
	k, err := c.GetKey(key)
	if err != nil {
		return nil, err
	}
	hashID, newHash, hashName := hashFor(k.Algorithm)
	digest, err := digestFile(artefact, newHash)
	if err != nil {
		return nil, err
	}
	sig, err := c.SignDigest(key, digest, correlationID)
	if err != nil {
		return nil, err
	}
	if sigPath == "" {
		sigPath = artefact + ".sig"
	}
	pemPath := artefact + ".pub.pem"
	pemText, err := c.PublicKeyPEM(key, sig.KeyVersion)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(sigPath, sig.DER, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(pemPath, []byte(pemText), 0o644); err != nil {
		return nil, err
	}
	if err := verifyLocally(pemText, hashID, digest, sig.DER, sig.Algorithm); err != nil {
		return nil, err
	}
	verdict, err := opensslVerify(artefact, sigPath, pemPath, hashName, sig.Algorithm)
	if err != nil {
		return nil, err
	}
	return &Result{SignaturePath: sigPath, PublicKeyPath: pemPath, KeyVersion: sig.KeyVersion,
		Algorithm: sig.Algorithm, CorrelationID: correlationID, OpenSSL: verdict}, nil
}

func defaultCorrelationID() string {
	for _, name := range []string{"FERROHSM_CORRELATION_ID", "GITHUB_RUN_ID", "CI_PIPELINE_ID"} {
		if v := os.Getenv(name); v != "" {
			return v
		}
	}
	return fmt.Sprintf("sign-%d", time.Now().UnixNano())
}

func main() {
	key := flag.String("key", "", "the designated signing key (id or name)")
	cid := flag.String("correlation-id", defaultCorrelationID(), "recorded in the audit log")
	out := flag.String("out", "", "signature file (default ARTEFACT.sig)")
	flag.Parse()
	if *key == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: sign-artifact -key KEY [-correlation-id ID] [-out FILE] ARTEFACT")
		os.Exit(2)
	}
	client, err := NewClientFromEnv()
	if err == nil {
		var res *Result
		if res, err = SignArtefact(client, *key, flag.Arg(0), *out, *cid); err == nil {
			fmt.Printf("signed %s with %s v%d (%s), correlation id %s\n", flag.Arg(0), *key,
				res.KeyVersion, res.Algorithm, res.CorrelationID)
			fmt.Printf("signature %s, public key %s; verified locally; openssl: %s\n",
				res.SignaturePath, res.PublicKeyPath, orNotInstalled(res.OpenSSL))
			return
		}
	}
	fmt.Fprintln(os.Stderr, "sign-artifact:", err)
	os.Exit(1)
}

func orNotInstalled(s string) string {
	if s == "" {
		return "not installed"
	}
	return s
}
