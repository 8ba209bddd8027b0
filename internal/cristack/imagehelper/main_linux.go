// Command imagehelper is the one static program of the images cristack
// builds for critest, chosen by the name it runs as:
//
//   - pause: the sandbox image's /pause: waits for SIGTERM/SIGINT and reaps
//     the children it inherits.
//   - nginx: the web server of e2e-test-images/nginx and hostnet-nginx. It
//     re-executes itself so that its command line reads like nginx's master
//     process ("nginx: master process nginx -g daemon off;", which critest's
//     PID-namespace specs look for in /proc/1/cmdline), writes its PID to
//     /var/run/nginx.pid and answers GET / with 200 on $NGINX_PORT (80).
//   - nnp: e2e-test-images/nonewprivs' program (installed set-user-ID
//     root): prints "Effective uid: N".
//   - httpd-foreground: the web server of e2e-test-images/httpd: logs a line
//     naming httpd (critest reads it from the container's log) and serves
//     like nginx on $HTTPD_PORT (80).
package main

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

// masterTitle is nginx's process title for its master process.
const masterTitle = "nginx: master process nginx -g daemon off;"

func main() {
	name := filepath.Base(os.Args[0])
	switch {
	case name == "pause":
		pause()
	case strings.HasPrefix(os.Args[0], "nginx: master process"):
		if err := os.WriteFile("/var/run/nginx.pid", fmt.Appendf(nil, "%d\n", os.Getpid()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "nginx:", err)
		}
		serve("nginx", port("NGINX_PORT"))
	case name == "nginx":
		// The title lives in argv[0]; the path keeps the process's name
		// (comm) "nginx", as pidof expects.
		exe, err := os.Executable()
		if err == nil {
			err = syscall.Exec(exe, []string{masterTitle}, os.Environ())
		}
		fmt.Fprintln(os.Stderr, "nginx: re-exec:", err)
		os.Exit(1)
	case name == "nnp":
		fmt.Printf("Effective uid: %d\n", os.Geteuid())
	case name == "httpd-foreground":
		serve("httpd", port("HTTPD_PORT"))
	default:
		fmt.Fprintf(os.Stderr, "imagehelper: unknown name %q (pause, nginx, httpd-foreground)\n", name)
		os.Exit(2)
	}
}

func port(env string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	return "80"
}

// pause waits for a termination signal, reaping children meanwhile (PID 1
// of a pod's shared PID namespace inherits orphans).
func pause() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}

func serve(name, port string) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
	go func() { <-sig; os.Exit(0) }()
	fmt.Fprintf(os.Stderr, "%s: layervisor cristack stand-in serving on :%s\n", name, port)
	page := fmt.Sprintf("<html><body><h1>It works! (%s stand-in)</h1></body></html>\n", name)
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, page)
	})
	err := http.ListenAndServe(":"+port, nil)
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	os.Exit(1)
}
