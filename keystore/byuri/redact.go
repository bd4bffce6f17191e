package byuri

import (
	"net/url"
	"strings"
)

// redacted replaces what Redact takes out.
const redacted = "REDACTED"

// shownParams are the query parameters, across every scheme, whose values
// are not secret: paths to files (never their contents), hosts, names,
// durations. Any other parameter, a PIN (pin-value), a token, a password a
// user put in by mistake, is shown without its value. A parameter added to
// a backend is redacted until it is listed here.
var shownParams = map[string]bool{
	// pkcs11
	"module-path": true, "module-name": true, "pin-source": true,
	// hcvault
	"tls": true, "ca-file": true, "cert-file": true, "key-file": true, "server-name": true,
	"namespace": true, "auth": true, "token-file": true, "role-id-file": true,
	"secret-id-file": true, "auth-mount": true, "cert-role": true,
	// aws-kms
	"endpoint": true, "profile": true, "context-name": true,
	// every remote backend
	"timeout": true, "key-id-ttl": true,
}

// Redact returns uri as it may be printed: in kmsctl's output, a log, the
// rotate state file or an error. It keeps what tells an operator which
// keystore it is and takes out every value that may be a secret: the value
// of every query parameter not known to be harmless (pkcs11's pin-value
// among them), a pin-value among pkcs11 path attributes, user information
// (user:password@) and a fragment. A value that names a file stays; a
// value holding '@' (credentials in an endpoint), '?' or '=' does not. Redact never
// fails: what it cannot read it does not show.
func Redact(uri string) string {
	scheme, rest, ok := strings.Cut(uri, ":")
	if !ok || scheme == "" || strings.ContainsAny(scheme, "/?#@;&=% ") {
		return redacted // no scheme: nothing tells what it is
	}
	rest, _, hasFrag := strings.Cut(rest, "#")
	head, query, hasQuery := strings.Cut(rest, "?")
	if auth, ok := strings.CutPrefix(head, "//"); ok {
		// user:password@host: the user may be a token, so both go.
		host, path, _ := strings.Cut(auth, "/")
		if at := strings.LastIndexByte(host, '@'); at >= 0 {
			host = redacted + "@" + host[at+1:]
		}
		head = "//" + host
		if strings.Contains(auth, "/") {
			head += "/" + path
		}
	}
	// pkcs11 path attributes are ';'-separated; a pin-value put there, or
	// after an '&' in any other scheme's path, goes too.
	for _, sep := range []string{";", "&"} {
		head = redactParts(head, sep, false, func(name string) bool { return name != "pin-value" })
	}
	out := scheme + ":" + head
	if hasQuery {
		out += "?" + redactParts(query, "&", true, func(name string) bool { return shownParams[name] })
	}
	if hasFrag {
		out += "#" + redacted
	}
	return out
}

// redactParts rewrites the name=value parts of s (separated by sep) whose
// name show refuses as name=REDACTED, and with strict also those whose
// value holds '@', '?' or '=' or does not decode. A part without '=' that
// show refuses, or whose name does not decode, is replaced whole.
func redactParts(s, sep string, strict bool, show func(name string) bool) string {
	parts := strings.Split(s, sep)
	for i, p := range parts {
		if p == "" {
			continue
		}
		rawName, rawValue, hasValue := strings.Cut(p, "=")
		name, err := url.PathUnescape(rawName)
		switch {
		case err != nil || (!hasValue && !show(strings.ToLower(name))):
			parts[i] = redacted
		case !hasValue:
		default:
			// A value holding '@' may carry credentials (an endpoint's
			// user:password@), one holding '?' or '=' more parameters.
			value, err := url.PathUnescape(rawValue)
			if !show(strings.ToLower(name)) || (strict && (err != nil || strings.ContainsAny(value, "@?="))) {
				parts[i] = rawName + "=" + redacted
			}
		}
	}
	return strings.Join(parts, sep)
}
