install.packages('x')
