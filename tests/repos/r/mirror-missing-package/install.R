install.packages("hpcbinderdemo")
install.packages("hpcbindernosuch")
