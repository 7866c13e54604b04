// exec-kubelet plays the one part of a kubelet that the pods/exec subresource needs: the
// apiserver forwards `kubectl exec`-style requests to the node's kubelet port, and this
// server answers them with the kubelet's own streaming code (k8s.io/cri-streaming), running
// the command as a local process. Tests point a Node's address and kubelet port here to
// prove that exec hooks go through the real apiserver and the real exec protocol.
//
// Every exec is appended to --log as one JSON line (time, pod, container, command, exit
// code) once it ends; the command gets DR_POD=<namespace>/<pod> and DR_CONTAINER in its
// environment.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

type logger struct {
	mu   sync.Mutex
	path string
}

func (l *logger) write(rec map[string]any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, err := os.OpenFile(l.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		log.Printf("log: %v", err)
		return
	}
	defer f.Close()
	b, _ := json.Marshal(rec)
	f.Write(append(b, '\n'))
}

// executor runs the command locally; the pod and container are only passed on.
type executor struct {
	log *logger
	pod string
}

func (e executor) ExecInContainer(ctx context.Context, name string, uid string, container string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	start := time.Now()
	if len(cmd) == 0 {
		return errors.New("no command")
	}
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	c.Env = append(os.Environ(), "DR_POD="+e.pod, "DR_CONTAINER="+container)
	c.Stdin, c.Stdout, c.Stderr = in, out, errw
	err := c.Run()
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else if err != nil {
		code = -1
	}
	e.log.write(map[string]any{
		"start": start.UTC().Format(time.RFC3339Nano), "end": time.Now().UTC().Format(time.RFC3339Nano),
		"pod": e.pod, "container": container, "command": cmd, "exit": code,
	})
	if exitErr != nil {
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	return err
}

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "exec-kubelet"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	logPath := flag.String("log", "exec.log", "file that gets one JSON line per exec")
	flag.Parse()
	lg := &logger{path: *logPath}
	mux := http.NewServeMux()
	// The kubelet's paths: /exec/{namespace}/{pod}/{container} and, with the pod's uid,
	// /exec/{namespace}/{pod}/{uid}/{container}.
	mux.HandleFunc("/exec/", func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/exec/"), "/")
		if len(parts) != 3 && len(parts) != 4 {
			http.Error(w, "bad exec path", http.StatusNotFound)
			return
		}
		ns, pod, container := parts[0], parts[1], parts[len(parts)-1]
		opts, err := remotecommand.NewOptions(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		cmd := r.URL.Query()["command"]
		remotecommand.ServeExec(w, r, executor{log: lg, pod: ns + "/" + pod}, pod, "", container, cmd, opts,
			4*time.Hour, remotecommand.DefaultStreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	// The test reads the port from the first line of stdout.
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSigned()}}}
	log.Fatal(srv.ServeTLS(ln, "", ""))
}
