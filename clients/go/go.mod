module github.com/qail-daemon/qail-daemon/clients/go

go 1.24
