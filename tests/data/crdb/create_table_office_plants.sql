CREATE TABLE office_plants (
     id INT PRIMARY KEY,
     plant_name STRING,
     office_floor INT,
     safe_for_dogs BOOL,
     FAMILY dog_friendly (office_floor, safe_for_dogs),
     FAMILY plant (id, plant_name)
   );
