# The agent image: one static binary. The BPF objects are embedded by
# bpf2go, so no clang or kernel headers are needed to build or run it.
#   docker build -t ghcr.io/sockbridge/sockbridge:dev .
# (Not built in CI: the development machines have no container engine; CI
# checks the same static build with `CGO_ENABLED=0 go build`.)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/sockbridge ./cmd/sockbridge

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/sockbridge /usr/local/bin/sockbridge
ENTRYPOINT ["/usr/local/bin/sockbridge"]
