# Sourced by bench.sh and instructions.sh: the configuration that has nginx and HAProxy give
# every request the four forwarding fields rouse adds (X-Forwarded-For, -Proto and -Host and
# Forwarded), so that the benchmarks give the three proxies the same job, and the backend
# reads the same head from each. FORWARDING=0 leaves it empty: nginx and HAProxy forwarding
# nothing, as in the runs before 2026-12-04 evening.
#
# Sets NG_FWD (an HTTP location's directives, the client's Host included), NG_GRPC_FWD (a
# grpc_pass location's) and HA_FWD (a frontend's lines). HA_PROTO is HAProxy's expression
# for the scheme; by default https on a TLS connection, else http.
NG_FWD="" NG_GRPC_FWD="" HA_FWD=""
if [ "${FORWARDING:-1}" = 1 ]; then
  ng_fwd() { # directive
    printf '%s X-Forwarded-For $proxy_add_x_forwarded_for;
      %s X-Forwarded-Proto $scheme; %s X-Forwarded-Host $host;
      %s Forwarded "for=$remote_addr;host=\\"$host\\";proto=$scheme";' "$1" "$1" "$1" "$1"
  }
  NG_FWD="proxy_set_header Host \$host; $(ng_fwd proxy_set_header)"
  NG_GRPC_FWD=$(ng_fwd grpc_set_header)
  proto=${HA_PROTO:-%[ssl_fc,iif(https,http)]}
  HA_FWD="  option forwardfor
  http-request set-header X-Forwarded-Proto $proto
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header Forwarded \"for=%[src];host=\\\"%[req.hdr(host)]\\\";proto=$proto\""
fi
