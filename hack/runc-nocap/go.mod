module slm-operator.local/runc-nocap

go 1.26
