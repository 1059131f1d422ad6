module example.com/ferrohsm-transit

go 1.19
