module example.com/ferrohsm-sign-artifact

go 1.19
