module slm-operator.local/pause

go 1.26
