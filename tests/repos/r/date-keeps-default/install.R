install.packages("hpcbinderdemo")
